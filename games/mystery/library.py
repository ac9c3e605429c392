"""The scripts shipped with the package, and resolution of a script argument (a shipped name or a folder path)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from stratagem.games.mystery.schema import Script, is_script_dir, load_script_dir

SCRIPTS_DIR = Path(__file__).parent / "scripts"


def shipped_scripts() -> list[str]:
    return sorted(p.name for p in SCRIPTS_DIR.iterdir() if is_script_dir(p))


def script_dir(name_or_path: str | Path) -> Path:
    """A shipped script's folder by name, else the path itself; an error naming both when neither exists."""
    if (SCRIPTS_DIR / str(name_or_path) / "script.json").exists():
        return SCRIPTS_DIR / str(name_or_path)
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p.resolve()
    raise FileNotFoundError(f"mystery script {str(name_or_path)!r} is neither a shipped script "
                            f"({', '.join(shipped_scripts())}) nor a folder")


@lru_cache(maxsize=32)
def _load(path: str) -> Script:
    return load_script_dir(path)


def load_script(name_or_path: str | Path) -> Script:
    """Load and validate a script (a shipped name or a folder); raises ScriptError listing every problem."""
    return _load(str(script_dir(name_or_path)))
