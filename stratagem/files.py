"""File helpers every writer shares: atomic replacement of a file or a directory, fsynced appends, and the one
reader of JSON-lines files (episodes, run logs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` so that a kill leaves either the old file or the complete new one: written and fsynced
    under a temporary name beside it, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """`with atomic_directory(out) as tmp: write into tmp`: on success `tmp` replaces `out` (any old `out` is removed
    first), so `out` is either absent, the old directory or the complete new one; on an exception `tmp` is removed
    and `out` left alone."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line, flushed and fsynced: once this returns the line survives a kill."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json_lines(path: str | os.PathLike, limit_bytes: int | None = None,
                    torn_tail: bool = True) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each line of a JSON-lines file, the first `limit_bytes` bytes only when given.
    Blank lines are skipped, and so is a torn last line (no newline and not valid JSON: a write cut by a kill) of
    a log we append to (`torn_tail`; off for input data, where it is an error too); any other line that is not a
    JSON object is an error (ValueError) naming the file and line."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read() if limit_bytes is None else f.read(limit_bytes)
    lines = data.decode("utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        yield i, rec
