"""The process guard that keeps vLLM's process tree from outliving us, on a plain tree of Python processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

# a command that starts a grandchild which would happily outlive everyone (like vLLM's engine core)
TREE = textwrap.dedent("""
    import subprocess, sys, time
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(g.pid, flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_dead(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pid)


def _guarded(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stratagem.integrations.process_guard", sys.executable, "-c", code],
                            stdout=subprocess.PIPE, text=True, start_new_session=True, **kw)


def test_sigterm_to_the_guard_takes_down_the_whole_tree():
    guard = _guarded(TREE)
    grandchild = int(guard.stdout.readline())
    assert _alive(grandchild)
    guard.send_signal(signal.SIGTERM)
    guard.wait(timeout=30)
    assert _wait_dead(grandchild), "the grandchild outlived the guard"


def test_when_the_command_exits_its_stragglers_die_and_its_exit_code_is_kept():
    code = textwrap.dedent("""
        import subprocess, sys
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(g.pid, flush=True)
        sys.exit(3)
    """)
    guard = _guarded(code)
    grandchild = int(guard.stdout.readline())
    assert guard.wait(timeout=30) == 3
    assert _wait_dead(grandchild)


def test_when_the_launching_process_is_killed_the_tree_dies():
    # launcher -> guard -> command -> grandchild; SIGKILL the launcher, which cannot clean up
    launcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time, os
        g = subprocess.Popen([sys.executable, "-m", "stratagem.integrations.process_guard", sys.executable, "-c",
                              {TREE!r}], start_new_session=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    grandchildren: list[int] = []
    while not grandchildren and time.monotonic() < deadline:
        kids = psutil.Process(launcher.pid).children(recursive=True)
        grandchildren = [k.pid for k in kids if "sleep(300)" in " ".join(k.cmdline()) and "subprocess" not in " ".join(k.cmdline())]
        time.sleep(0.2)
    assert grandchildren, "the tree did not start"
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    assert all(_wait_dead(p) for p in grandchildren), "processes outlived the killed launcher"
