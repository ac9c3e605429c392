"""Failpoints: named places where a crash-consistency test kills the process (SIGKILL, nothing flushed or cleaned
up), the way etcd's gofail and SQLite's crash tests inject faults. Off unless the environment variable
STRATAGEM_FAILPOINT (or `arm`) names one: `NAME:N` kills the process the N-th time NAME is reached. Each call is
one dictionary lookup when nothing is armed.

Sites: rollout.episode (a finished game, before it is written), append.torn (halfway through writing a line),
update.step (before an optimizer step), adapter.save (the adapter written, its state not yet), install (before the
policy goes to the server), commit.metrics / commit.marker (between the commit's writes), atomic_write.rename and
atomic_directory.rename (a file or directory complete under its temporary name)."""

from __future__ import annotations

import os
import signal

ENV = "STRATAGEM_FAILPOINT"
_armed: dict[str, list[int]] = {}  # name -> [hits left before the kill]


def arm(spec: str | None) -> None:
    """Arm one failpoint (`NAME:N`), or disarm all (None / '')."""
    _armed.clear()
    if spec:
        name, _, n = spec.partition(":")
        _armed[name] = [int(n or 1)]


def reached(name: str) -> bool:
    """Count one pass through `name`; True when this is the pass the armed failpoint kills at."""
    left = _armed.get(name)
    if left is None:
        return False
    left[0] -= 1
    return left[0] == 0


def point(name: str) -> None:
    """A failpoint: the process dies here when armed for this pass."""
    if reached(name):
        kill()


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


arm(os.environ.get(ENV))
