"""File helpers every writer shares: atomic replacement of a file or a directory, fsynced appends, and the one
reader of JSON-lines files (episodes, run logs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from stratagem import faults


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
    faults.point("atomic_write.rename")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry is data of the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    for p in tmp.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    faults.point("atomic_directory.rename")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line, flushed and fsynced: once this returns the line survives a kill."""
    append_bytes(path, (line + "\n").encode("utf-8"))


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open(path, "ab") as f:
        if faults.reached("append.torn"):  # a write cut halfway by a kill
            f.write(data[: len(data) // 2])
            f.flush()
            faults.kill()
        f.write(data)
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


# ---- committed logs: the one commit-and-verify rule of every writer ----------------------------------------------

class StoreDamage(ValueError):
    """Committed data is not what was committed: a file shorter than its commit, other bytes, a missing file. The
    message names the file, what was expected, what was found and how to recover."""


def sha256_bytes(path: str | os.PathLike, start: int = 0, end: int | None = None) -> str:
    """sha256 of bytes [start, end) of a file (to its end when `end` is None)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def cut_to(path: str | os.PathLike, size: int) -> None:
    """Cut a file back to `size` bytes (an uncommitted tail). Refuses to grow it: `truncate` past the end pads with
    NUL bytes, which would hide a file that lost committed data."""
    have = os.path.getsize(path)
    if have < size:
        raise StoreDamage(f"{path}: cannot cut to {size} bytes, it has only {have}")
    if have > size:
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())


def manifest(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under a directory: what a commit records of it."""
    root = Path(directory)
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_bytes(p)}
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_manifest(directory: str | os.PathLike, want: dict[str, dict[str, Any]], hashes: bool = True) -> None:
    """Raise StoreDamage unless every file a manifest lists is under `directory` with its size (and, with `hashes`,
    its sha256)."""
    root = Path(directory)
    for name, rec in want.items():
        p = root / name
        if not p.is_file():
            raise StoreDamage(f"{p}: missing (committed with {rec['bytes']} bytes)")
        size = p.stat().st_size
        if size != rec["bytes"]:
            raise StoreDamage(f"{p}: expected {rec['bytes']} bytes as committed, found {size}")
        if hashes and (got := sha256_bytes(p)) != rec["sha256"]:
            raise StoreDamage(f"{p}: expected sha256 {rec['sha256'][:16]}... as committed, found {got[:16]}...")


class AppendLog:
    """An append-only JSON-lines file whose committed prefix is known: `state()` is what a commit records of it
    (bytes, lines, sha256 of those bytes, kept incrementally), `recover(commit)` checks the file still holds exactly
    that prefix and cuts off what came after it (a torn or uncommitted tail). Where the commit is kept is the
    owner's business: a run's checkpoint (RunStore), or a sidecar file (Journal)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._hash = hashlib.sha256()
        self._bytes = 0
        self._lines = 0

    def state(self) -> dict[str, Any]:
        return {"bytes": self._bytes, "lines": self._lines, "sha256": self._hash.hexdigest()}

    def check(self, commit: dict[str, Any] | None) -> None:
        """Raise StoreDamage unless the file starts with the committed bytes (no change to the file)."""
        self._scan(commit)

    def recover(self, commit: dict[str, Any] | None) -> None:
        """Check the committed prefix, then cut the file back to it; appends continue from there."""
        self._scan(commit)
        if self.path.exists():
            cut_to(self.path, self._bytes)

    def _scan(self, commit: dict[str, Any] | None) -> None:
        want = commit or {"bytes": 0, "lines": 0, "sha256": hashlib.sha256().hexdigest()}
        have = self.path.stat().st_size if self.path.exists() else None
        if want["bytes"] and have is None:
            raise StoreDamage(f"{self.path}: missing (committed with {want['bytes']} bytes)")
        if want["bytes"] and have < want["bytes"]:
            raise StoreDamage(f"{self.path}: expected at least {want['bytes']} committed bytes, found {have} (the "
                              "file lost committed data: cut, or replaced by an older copy)")
        h, lines = hashlib.sha256(), 0
        if want["bytes"]:
            with open(self.path, "rb") as f:
                data = f.read(want["bytes"])
            h.update(data)
            lines = data.count(b"\n")
        if want["sha256"] is not None and h.hexdigest() != want["sha256"]:  # None: a length-only commit
            raise StoreDamage(f"{self.path}: the first {want['bytes']} bytes (committed) have sha256 "
                              f"{h.hexdigest()[:16]}..., expected {want['sha256'][:16]}... (changed after the commit)")
        self._hash, self._bytes, self._lines = h, want["bytes"], lines

    def append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        append_bytes(self.path, data)
        self._hash.update(data)
        self._bytes += len(data)
        self._lines += 1


class Journal(AppendLog):
    """An AppendLog that commits itself: after each `append` the new state is written atomically to a sidecar
    `<file>.commit.json`, so every record, once appended, is committed and verified on the next open. A file without
    a sidecar (written before Stratagem kept one) is adopted: every complete line must be JSON, a torn last line is
    cut. The eval writers keep their outputs in these."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.sidecar = self.path.with_name(self.path.name + ".commit.json")
        self._opened = False

    def open(self) -> Journal:
        """Verify the committed records and cut an uncommitted tail; raises StoreDamage (with the way out) when the
        committed part is not intact. Idempotent."""
        if self._opened:
            return self
        if self.sidecar.exists():
            try:
                commit = json.loads(self.sidecar.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise StoreDamage(f"{self.sidecar}: not valid JSON (the commit record of {self.path.name}); "
                                  f"move both files away to redo their records") from None
            try:
                self.recover(commit)
            except StoreDamage as e:
                raise StoreDamage(f"{e}; restore it, or move {self.path} and {self.sidecar.name} away to redo its "
                                  "records") from None
        elif self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                data = f.read()
            for i, line in enumerate(data.splitlines(keepends=True), 1):
                if not line.endswith(b"\n"):
                    break  # a torn last line: cut below
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError as e:
                        raise StoreDamage(f"{self.path}:{i}: not valid JSON ({e.msg}); repair or remove the line, "
                                          "or move the file away to redo its records") from None
                good += len(line)
            cut_to(self.path, good)
            self._hash.update(data[:good])
            self._bytes, self._lines = good, data[:good].count(b"\n")
            self._commit()
        self._opened = True
        return self

    def append(self, line: str) -> None:
        self.open()
        super().append(line)
        self._commit()

    def write_all(self, lines: Iterable[str]) -> None:
        """Replace the journal with these lines, committed at once (a one-shot result file)."""
        data = "".join(line + "\n" for line in lines)
        atomic_write(self.path, data)
        self._hash = hashlib.sha256(data.encode("utf-8"))
        self._bytes, self._lines = len(data.encode("utf-8")), data.count("\n")
        self._commit()
        self._opened = True

    def records(self) -> list[dict[str, Any]]:
        """The committed records (verified)."""
        self.open()
        if not self._bytes:
            return []
        return [rec for _, rec in read_json_lines(self.path, self._bytes, torn_tail=False)]

    def _commit(self) -> None:
        atomic_write(self.sidecar, json.dumps(self.state()))
