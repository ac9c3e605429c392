"""`langgraph.json` from the game registry: every registered game with an `app` is one graph.

    python -m stratagem.games.langgraph_config            # print it
    python -m stratagem.games.langgraph_config --write    # write ./langgraph.json of the repository
    python -m stratagem.games.langgraph_config --check    # exit 1 when the committed file differs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from stratagem.games.registry import game_specs

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout of an editable install


def app_path(app: str, root: Path = REPO_ROOT) -> str:
    """'stratagem.games.strategic.apps:tictactoe' -> './games/strategic/apps.py:tictactoe' (relative to `root`)."""
    module, _, attr = app.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"app {app!r}: module {module!r} not found")
    rel = Path(os.path.relpath(Path(spec.origin).resolve(), root.resolve())).as_posix()
    return f"./{rel}:{attr}"


def langgraph_config(root: Path = REPO_ROOT) -> dict[str, Any]:
    return {"dependencies": ["."],
            "graphs": {s.name: app_path(s.app, root) for s in game_specs() if s.app is not None}}


def render(root: Path = REPO_ROOT) -> str:
    return json.dumps(langgraph_config(root), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stratagem.games.langgraph_config", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="write langgraph.json at the repository root")
    p.add_argument("--check", action="store_true", help="exit 1 when langgraph.json differs from the registry")
    args = p.parse_args(argv)
    path, text = REPO_ROOT / "langgraph.json", render()
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    elif args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} differs from the game registry; run python -m stratagem.games.langgraph_config --write",
                  file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
