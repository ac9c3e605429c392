"""Run a command so that it and every process it starts die with the process that launched the guard.

vLLM's API server forks an engine core and workers; a kernel parent-death signal on the API server alone leaves
those running when our Python process is killed. The guard leads its own process group, runs the command inside
it, and kills the whole group when its parent goes away (death signal, or the parent pid changing), when it is
asked to stop (SIGTERM: graceful first), or when the command exits (stragglers)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 15.0


def _kill_group() -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGKILL)


def _kill_others() -> None:
    """SIGKILL every other process of our group (the command's leftovers), keeping our exit code."""
    import psutil

    me, group = os.getpid(), os.getpgid(0)
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if p.pid != me and os.getpgid(p.pid) == group:
                p.kill()


def main() -> None:
    parent = os.getppid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    child = subprocess.Popen(sys.argv[1:])

    def stop(*_: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=GRACE_S)
        _kill_group()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        code = child.poll()
        if code is not None:
            _kill_others()
            os._exit(code if code >= 0 else 128 - code)
        if os.getppid() != parent:
            stop()
        time.sleep(0.5)


if __name__ == "__main__":
    main()
