"""Where Stratagem keeps things on the user's machine."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """`$STRATAGEM_CACHE`, else `$XDG_CACHE_HOME/stratagem`, else `~/.cache/stratagem`."""
    if os.environ.get("STRATAGEM_CACHE"):
        return Path(os.environ["STRATAGEM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stratagem"
