"""Crash consistency of the run store by fault injection (as SQLite and etcd test their logs): a short training run
(tiny random-weight model, scripted rollout, stand-in server) is killed with SIGKILL N times at seeded random
moments, resumed after each kill, then finished; the store is then checked against an uninterrupted run of the
same config.

Each kill is either a failpoint (stratagem/faults.py: in the rollout, halfway through an episode write, before an
optimizer step, during the adapter save, before the install, between the commit's writes, before a rename), armed
for its n-th pass, or a timer that kills from outside at a random time. Invariants checked at the end:

- the store verifies (every commit's checksums, every adapter's manifest) and no `.tmp` leftover remains;
- every line of episodes.jsonl is readable JSON;
- the committed episodes are those of the uninterrupted run, each (iteration, game, seed) exactly once;
- commit markers 1..K, metrics one line per iteration 1..K;
- every iteration's adapter loads and equals the uninterrupted run's (same bytes: the resume is exact).

Every child is forked from this process, which never computes with torch before the last fork.

    python benchmarks/crash_consistency.py --kills 200 --seed 0        # the benchmark; JSON on stdout
    tests/test_run_store.py runs it with --kills 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# how many passes each failpoint sees per iteration of the config below (an armed pass is drawn from 1..2x this)
SITES = {"rollout.episode": 4, "append.torn": 6, "update.step": 2, "adapter.save": 1, "install": 1,
         "commit.metrics": 1, "commit.marker": 1, "atomic_write.rename": 1, "atomic_directory.rename": 1}


def config(model: str, iterations: int) -> dict:
    return {"loop": {"algo": "mars", "iterations": iterations, "episodes_per_iteration": 4, "model": model,
                     "games": ["tictactoe", "kuhn_poker"]},
            "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256, "minibatches": 2}}


def _child(cfg: dict, out: str, resume: bool, failpoint: str | None, err: str) -> None:
    """The forked run: arm the failpoint, train (or resume), exit without running the parent's cleanup."""
    code = 0
    try:
        from transformers.utils import logging as hf_logging

        from stratagem import faults
        from stratagem.training.loop import RunConfig, run_training

        hf_logging.disable_progress_bar()
        from training_fakes import FakeServer, make_fake_rollout

        faults.arm(failpoint)
        run_training(RunConfig.from_dict(cfg), out, resume=resume, server=FakeServer(),
                     rollout=make_fake_rollout([], delay=0.005), progress=False)
    except BaseException:  # noqa: BLE001  reported to the parent as a violation
        Path(err).write_text(traceback.format_exc())
        code = 1
    finally:
        os._exit(code)


def run_child(cfg: dict, out: Path, resume: bool, failpoint: str | None = None,
              kill_after: float | None = None) -> tuple[str, str]:
    """('done' | 'killed' | 'error', error text) of one forked run."""
    err = out.parent / f"{out.name}.err"
    err.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:
        _child(cfg, str(out), resume, failpoint, str(err))
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return "done", ""  # finished before the timer (or failed: read below)
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed", ""
    if err.exists():
        return "error", err.read_text()
    return "done", ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_invariants(out: Path, ref: Path, iterations: int) -> list[str]:
    """Violations of the crash-consistency invariants in run `out` (RunStore.problems), and its differences from
    the uninterrupted run `ref`."""
    from stratagem.training.run_store import RunStore

    store, want = RunStore(out), RunStore(ref)
    bad = store.problems()
    if store.completed_iterations() != iterations:
        bad.append(f"{store.completed_iterations()} iterations committed, expected {iterations}")
    got = sorted((e.iteration, e.game, e.seed) for e in store.episodes())
    if got != sorted((e.iteration, e.game, e.seed) for e in want.episodes()):
        bad.append("the committed episodes differ from the uninterrupted run's")
    for k in range(1, iterations + 1):
        a, b = store.adapter_dir(k) / "adapter_model.safetensors", want.adapter_dir(k) / "adapter_model.safetensors"
        if not a.exists():
            bad.append(f"adapter iter-{k} missing")
        elif _sha(a) != _sha(b):
            bad.append(f"adapter iter-{k} differs from the uninterrupted run's")
    return bad


def adapters_load(out: Path, ref: Path, iterations: int) -> list[str]:
    """Every adapter loads (safetensors) with the uninterrupted run's tensors; run after the last fork."""
    import torch
    from safetensors.torch import load_file

    bad = []
    for k in range(1, iterations + 1):
        try:
            a = load_file(out / "adapters" / f"iter-{k}" / "adapter_model.safetensors")
            b = load_file(ref / "adapters" / f"iter-{k}" / "adapter_model.safetensors")
        except Exception as e:  # noqa: BLE001
            bad.append(f"adapter iter-{k} does not load: {e}")
            continue
        if a.keys() != b.keys() or not all(torch.equal(a[n], b[n]) for n in a):
            bad.append(f"adapter iter-{k} tensors differ")
    return bad


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--workdir", type=Path, help="Where the runs go (default: a temporary folder, removed).")
    a = ap.parse_args(argv)
    from training_fakes import tiny_model

    tmp = None if a.workdir else tempfile.TemporaryDirectory(prefix="stratagem-crash-")
    work = a.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model = str(tiny_model(work / "model"))
    # imported before the forks, so a timer kill lands in the run's own phases, not in a child's imports
    import stratagem.training.loop  # noqa: F401
    cfg = config(model, a.iterations)
    rng = random.Random(a.seed)

    t0 = time.perf_counter()
    ref, out = work / "reference", work / "killed"
    status, err = run_child(cfg, ref, resume=False)
    if status != "done":
        raise SystemExit(f"the uninterrupted run failed: {err}")
    ref_s = time.perf_counter() - t0

    kills: Counter = Counter()
    violations: list[str] = []
    resumes = finished_early = 0
    t1 = time.perf_counter()
    while sum(kills.values()) < a.kills:
        resume = (out / "checkpoint.json").exists()
        resumes += resume
        if rng.random() < 0.6:
            site = rng.choice(sorted(SITES))
            spec, timer = f"{site}:{rng.randint(1, 2 * SITES[site])}", None
        else:
            site, spec, timer = "timer", None, rng.uniform(0.0, ref_s / 2)
        status, err = run_child(cfg, out, resume, spec, timer)
        if status == "error":
            violations.append(f"after {sum(kills.values())} kills the run failed: {err.strip().splitlines()[-1]}")
            break
        if status == "killed":
            kills[site] += 1
        elif (out / "checkpoint.json").exists() and json.loads((out / "checkpoint.json").read_text())["iteration"] \
                == a.iterations:  # the run ended before the kill: start it again from scratch
            finished_early += 1
            import shutil

            shutil.rmtree(out)
    status, err = run_child(cfg, out, resume=(out / "checkpoint.json").exists())
    resumes += 1
    if status != "done":
        violations.append(f"the final resume failed: {err.strip().splitlines()[-1] if err else status}")
    else:
        violations += check_invariants(out, ref, a.iterations) + adapters_load(out, ref, a.iterations)
    result = {"benchmark": "crash_consistency", "seed": a.seed, "iterations": a.iterations,
              "kills": sum(kills.values()), "kills_by_site": dict(sorted(kills.items())), "resumes": resumes,
              "restarts_after_finishing": finished_early, "violations": len(violations),
              "violation_details": violations, "uninterrupted_s": round(ref_s, 2),
              "killed_run_s": round(time.perf_counter() - t1, 2)}
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
