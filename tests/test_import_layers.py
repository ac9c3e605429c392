"""Imports run one way: base modules < agents and games < integrations < training < the command-line modules.

Every `import` in the package is read (module level, inside functions and under TYPE_CHECKING alike: a deferred
import is still a dependency). The layers, lowest first:

- base: the top-level modules of `stratagem` (settings, files, endpoints, plugins, config, ...), which import no
  other layer;
- play: `stratagem.agents` and `stratagem.games` (an agent acts on a game's observation, a game seats agents: one
  layer);
- `stratagem.integrations`: the vLLM server, the evaluations and the outside systems (AutoGen, debate, benchmarks);
- `stratagem.training`: the loop starts and drives servers and evaluations;
- the command-line modules (`stratagem.cli` and every package's `cli`), which wire the layers together and are
  imported by nothing but each other.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"agents": 1, "games": 1, "integrations": 2, "training": 3}
CLI = 4


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name, from pyproject's package-dir map."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def rank(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "cli":
        return CLI
    return RANK.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a stratagem module in the file."""
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.append((node.lineno, base))
    return [(line, m) for line, m in out if m == "stratagem" or m.startswith("stratagem.")]


def violations() -> list[str]:
    bad = []
    for module, path in _modules().items():
        mine = rank(module)
        for line, target in _imports(path, module):
            if target == "stratagem":
                continue
            theirs = rank(target)
            if theirs > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {mine}) imports {target} "
                           f"(layer {theirs})")
    return bad


def test_every_import_points_down_or_sideways():
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: an upward import in a play-layer module, a sideways one and a deferred one."""
    assert rank("stratagem.games.graph") == 1 and rank("stratagem.training.loop") == 3
    assert rank("stratagem.games.mystery.cli") == CLI and rank("stratagem.endpoints") == 0
    f = tmp_path / "m.py"
    f.write_text("import stratagem.agents.base\nfrom ..training import loop\n"
                 "def f():\n    from stratagem.integrations.vllm_server import VLLMServer\n")
    assert _imports(f, "stratagem.games.m") == [(1, "stratagem.agents.base"), (2, "stratagem.training"),
                                                 (4, "stratagem.integrations.vllm_server")]
    monkeypatch.setitem(globals(), "_modules", lambda: {"stratagem.games.m": f})
    assert [v.split(": ", 1)[1] for v in violations()] == [
        "stratagem.games.m (layer 1) imports stratagem.training (layer 3)",
        "stratagem.games.m (layer 1) imports stratagem.integrations.vllm_server (layer 2)"]
