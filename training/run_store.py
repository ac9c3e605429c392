"""The run directory: everything a training run writes, laid out so that a kill -9 at any moment loses nothing
that was committed and counts nothing twice, and damage to what was committed is found before anything is written.

    RUN_DIR/config.yaml          the full run configuration (what `--resume` reads back)
    RUN_DIR/episodes.jsonl       append-only: episode records, then {"commit": k, ...} once iteration k is done
    RUN_DIR/adapters/iter-k/     peft adapter + trainer_state.pt (optimizer, RNG, estimator state) of iteration k
    RUN_DIR/metrics.jsonl        one line per completed iteration
    RUN_DIR/checkpoint.json      the commit point: every commit so far and what it committed
    RUN_DIR/tb/                  TensorBoard events
    RUN_DIR/plots/               PNG curves (`stratagem report`)

An iteration is committed by writing checkpoint.json atomically, last. Each commit records the byte length, line
count and sha256 of the committed prefix of episodes.jsonl and metrics.jsonl and a manifest (size, sha256) of its
adapter's files; the checkpoint also holds the sha256 of config.yaml. A resume first verifies all of that (without
writing), then cuts the logs back to the last commit, so an iteration that did not finish is dropped and redone.
When the committed part is damaged the resume stops with StoreDamage, naming the file, what was expected and found,
and the last intact commit K that `--resume-from K` rolls back to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from stratagem import faults
from stratagem.files import (
    AppendLog,
    StoreDamage,
    atomic_directory,
    atomic_write,
    check_manifest,
    manifest,
    read_json_lines,
)
from stratagem.games.core import Episode, read_jsonl

FORMAT = 2


class RunStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.config_path = self.root / "config.yaml"
        self.episodes_path = self.root / "episodes.jsonl"
        self.metrics_path = self.root / "metrics.jsonl"
        self.checkpoint_path = self.root / "checkpoint.json"
        self.adapters_dir = self.root / "adapters"
        self.tb_dir = self.root / "tb"
        self.plots_dir = self.root / "plots"
        self._episodes = AppendLog(self.episodes_path)
        self._metrics = AppendLog(self.metrics_path)
        self._open = False  # the logs are positioned at the last commit (create, resume or rollback)

    # ---- creation and resume -----------------------------------------------------------------------------
    def create(self, config: dict[str, Any], **info: Any) -> None:
        """Start a new run; refuses a directory that already holds one (resume it or pick another name). `info`
        (e.g. the trainer's dtype) is kept in the checkpoint."""
        if self.checkpoint_path.exists() or self.episodes_path.exists():
            raise FileExistsError(f"{self.root} already holds a run; pass --resume to continue it or choose "
                                  "another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapters_dir.mkdir(exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write(self.config_path, text)
        self._write_checkpoint({"format": FORMAT, "config_sha256": _sha(text.encode("utf-8")), **info,
                                "commits": []})
        self._episodes.recover(None)
        self._metrics.recover(None)
        self._open = True

    def read_config(self) -> dict[str, Any]:
        """The saved configuration, verified against the checksum the run was created with."""
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run directory: no config.yaml")
        data = self.config_path.read_bytes()
        if self.checkpoint_path.exists():
            want = self.checkpoint().get("config_sha256")
            if want is not None and _sha(data) != want:
                raise StoreDamage(f"{self.config_path}: changed after the run was created (sha256 {_sha(data)[:16]}"
                                  f"..., expected {want[:16]}...); a resume continues the saved configuration: "
                                  "restore the file, or start a new run with --config and another --out. Nothing "
                                  "was written.")
        return yaml.safe_load(data.decode("utf-8"))

    def checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run directory: no checkpoint.json")
        try:
            cp = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreDamage(f"{self.checkpoint_path}: not valid JSON ({e}); the commit record of the run is "
                              "lost. Nothing was written.") from None
        return _upgrade(cp, self.metrics_path)

    def completed_iterations(self) -> int:
        return int(self.checkpoint()["iteration"])

    def resume(self, resume_from: int | None = None) -> dict[str, Any]:
        """Verify every commit (logs' checksums, adapter files' sizes, the resumed adapter's checksums), then roll
        back to the last commit, or to iteration `resume_from`, dropping what came after it. Writes nothing when
        verification fails: StoreDamage names the file and the last intact commit. Returns the checkpoint."""
        self.read_config()  # its checksum
        cp = self.checkpoint()
        commits = cp["commits"]
        points = [0] + [c["iteration"] for c in commits]
        target = points[-1] if resume_from is None else resume_from
        if target not in points:
            raise ValueError(f"--resume-from {target}: {self.root} has commits of iterations "
                             f"{', '.join(map(str, points))} (0: the start)")
        keep = [c for c in commits if c["iteration"] <= target]
        try:
            self._verify(keep)
        except StoreDamage as e:
            raise StoreDamage(f"cannot resume {self.root}: {e}. {self._way_out(commits)} Nothing was written.") \
                from None
        if len(keep) < len(commits):  # the new commit point first: a kill during the roll-back resumes to `target`
            self._write_checkpoint({**cp, "commits": keep})
        return self.rollback()

    def rollback(self) -> dict[str, Any]:
        """Cut episodes.jsonl and metrics.jsonl back to the last commit (checked to be there) and drop adapters
        written after it: what a kill left behind after the commit point is discarded. Returns the checkpoint."""
        cp = self.checkpoint()
        last = cp["commits"][-1] if cp["commits"] else {}
        self._episodes.recover(last.get("episodes_log"))
        self._metrics.recover(last.get("metrics_log"))
        for d in self.adapters_dir.glob("iter-*"):
            k = d.name.removeprefix("iter-").removesuffix(".tmp")
            if d.name.endswith(".tmp") or (k.isdigit() and int(k) > cp["iteration"]):
                shutil.rmtree(d, ignore_errors=True)
        self._open = True
        return cp

    def verify(self) -> None:
        """Raise StoreDamage unless every commit's data is intact (the check a resume makes; writes nothing)."""
        self.read_config()
        self._verify(self.checkpoint()["commits"])

    def problems(self) -> list[str]:
        """What is wrong with this store, [] when nothing: the resume's verification, then the invariants a store
        must keep after any number of kills and resumes: every line of the logs readable, commit markers and
        metrics lines 1..K once each in order, each committed episode (iteration, game, seed) once and in the
        iteration it was committed with, the committed episode count equal to the checkpoint's, no leftover .tmp."""
        try:
            self.verify()
        except (StoreDamage, FileNotFoundError) as e:
            return [str(e)]
        bad: list[str] = []
        cp = self.checkpoint()
        k = cp["iteration"]
        lines = self.episodes_path.read_bytes().splitlines(keepends=True) if self.episodes_path.exists() else []
        for i, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                bad.append(f"{self.episodes_path}:{i} is not readable JSON")
        records = [json.loads(x) for x in lines]
        markers = [r["commit"] for r in records if "commit" in r and "game" not in r]
        if markers != list(range(1, k + 1)):
            bad.append(f"commit markers {markers}, expected 1..{k}")
        its = [m.get("iteration") for m in self.metrics()]
        if its != list(range(1, k + 1)):
            bad.append(f"metrics lines of iterations {its}, expected 1..{k}")
        seen: set[tuple] = set()
        iteration, n = 1, 0
        for r in records:
            if "commit" in r and "game" not in r:
                iteration += 1
                continue
            key = (r.get("iteration"), r.get("game"), r.get("seed"))
            if key in seen:
                bad.append(f"episode {key} present more than once")
            if r.get("iteration") != iteration:
                bad.append(f"episode {key} written in iteration {iteration}'s part of the log")
            seen.add(key)
            n += 1
        if n != cp["episodes"]:
            bad.append(f"{n} committed episodes readable, the checkpoint counts {cp['episodes']}")
        bad += [f"leftover temporary file {p}" for p in self.root.rglob("*.tmp")]
        return bad

    def _verify(self, commits: list[dict[str, Any]]) -> None:
        last = commits[-1] if commits else {}
        # a commit's checksum covers the whole prefix, so checking the last one checks every earlier one too
        AppendLog(self.episodes_path).check(last.get("episodes_log"))
        AppendLog(self.metrics_path).check(last.get("metrics_log"))
        for c in commits:
            check_manifest(self.adapter_dir(c["iteration"]), c["adapter"], hashes=c is last)

    def _way_out(self, commits: list[dict[str, Any]]) -> str:
        """How to recover: the last commit whose data is all intact, and the command that rolls back to it."""
        good = min(_intact_prefixes(self.episodes_path, [c["episodes_log"] for c in commits]),
                   _intact_prefixes(self.metrics_path, [c["metrics_log"] for c in commits]))
        for j, c in enumerate(commits[:good]):
            try:
                check_manifest(self.adapter_dir(c["iteration"]), c["adapter"], hashes=False)
            except StoreDamage:
                good = j
                break
        while good:
            try:
                check_manifest(self.adapter_dir(commits[good - 1]["iteration"]), commits[good - 1]["adapter"])
                break
            except StoreDamage:
                good -= 1
        k = commits[good - 1]["iteration"] if good else 0
        lost = [c["iteration"] for c in commits[good:]]
        dropped = f"iteration {lost[0]} is" if len(lost) == 1 else f"iterations {lost[0]}-{lost[-1]} are"
        return (f"The last intact commit is iteration {k}: `stratagem train --out {self.root} --resume "
                f"--resume-from {k}` rolls the run back to it ({dropped} dropped and redone).")

    # ---- episodes ------------------------------------------------------------------------------------------
    def append_episode(self, episode: Episode) -> None:
        self._require_open()
        self._episodes.append(episode.to_json())

    def episodes(self, committed_only: bool = True) -> Iterator[Episode]:
        """Episodes in file order; by default only those of committed iterations."""
        if not self.episodes_path.exists():
            return
        limit = self.checkpoint()["episodes_bytes"] if committed_only else None
        yield from read_jsonl(self.episodes_path, limit)

    # ---- adapters and trainer state ------------------------------------------------------------------------
    def adapter_dir(self, iteration: int) -> Path:
        return self.adapters_dir / f"iter-{iteration}"

    def save_iteration(self, iteration: int, trainer: Any, state: dict[str, Any]) -> Path:
        """Write adapter iter-k with the trainer state (optimizer, RNG) and the loop state in one directory that
        appears atomically (written under a .tmp name, then renamed)."""
        final = self.adapter_dir(iteration)
        with atomic_directory(final) as tmp:
            trainer.write_adapter(tmp)
            faults.point("adapter.save")
            torch.save({"trainer": trainer.state_dict(), "loop": state}, tmp / "trainer_state.pt")
        return final

    def load_state(self, iteration: int) -> dict[str, Any]:
        return torch.load(self.adapter_dir(iteration) / "trainer_state.pt", weights_only=False)

    # ---- metrics and commit --------------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [rec for _, rec in read_json_lines(self.metrics_path)]

    def commit(self, iteration: int, n_episodes: int, metrics: dict[str, Any]) -> None:
        """Close iteration k: its metrics line, the commit marker after its episodes, then the checkpoint (the
        atomic commit point) recording all three."""
        self._require_open()
        cp = self.checkpoint()
        self._metrics.append(json.dumps(metrics, sort_keys=True))
        faults.point("commit.metrics")
        total = cp["episodes"] + n_episodes
        self._episodes.append(json.dumps({"commit": iteration, "episodes": total}))
        faults.point("commit.marker")
        adapter = self.adapter_dir(iteration)
        record = {"iteration": iteration, "episodes": total, "episodes_log": self._episodes.state(),
                  "metrics_log": self._metrics.state(), "adapter": manifest(adapter) if adapter.is_dir() else {}}
        self._write_checkpoint({**cp, "commits": cp["commits"] + [record]})

    def _write_checkpoint(self, cp: dict[str, Any]) -> None:
        last = cp["commits"][-1] if cp["commits"] else None
        # the flat fields readers use (the committed lengths), derived from the last commit
        flat = {"iteration": last["iteration"] if last else 0, "episodes": last["episodes"] if last else 0,
                "episodes_bytes": last["episodes_log"]["bytes"] if last else 0,
                "metrics_lines": last["metrics_log"]["lines"] if last else 0}
        atomic_write(self.checkpoint_path, json.dumps({**cp, **flat}))

    def _require_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"RunStore({self.root}): call create() or resume() before writing")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _intact_prefixes(path: Path, logs: list[dict[str, Any]]) -> int:
    """How many of these commits (in order) the file still holds: one pass, the checksum compared at each commit's
    length."""
    if not path.exists():
        return sum(1 for lg in logs if lg["bytes"] == 0)
    h, at, n = hashlib.sha256(), 0, 0
    with open(path, "rb") as f:
        for lg in logs:
            chunk = f.read(lg["bytes"] - at)
            h.update(chunk)
            at += len(chunk)
            if at != lg["bytes"] or h.hexdigest() != lg["sha256"]:
                break
            n += 1
    return n


def _upgrade(cp: dict[str, Any], metrics_path: Path) -> dict[str, Any]:
    """A checkpoint written before commits were recorded (format 1: lengths only) read as one adopted commit with
    what can still be checked: its lengths (never an extension of a shorter file) and no checksums."""
    if cp.get("format") == FORMAT:
        return cp
    if not cp.get("iteration"):
        return {**cp, "format": FORMAT, "commits": []}
    k = int(cp["iteration"])
    adopted = {"iteration": k, "episodes": cp["episodes"], "adapter": {}, "adopted": True,
               "episodes_log": {"bytes": cp["episodes_bytes"], "lines": None, "sha256": None},
               "metrics_log": {"bytes": _line_bytes(metrics_path, cp["metrics_lines"]),
                               "lines": cp["metrics_lines"], "sha256": None}}
    return {**cp, "format": FORMAT, "commits": [adopted]}


def _line_bytes(path: Path, lines: int) -> int:
    """Bytes of the first `lines` lines of a file (more than the file has when it has fewer lines)."""
    if not lines:
        return 0
    if not path.exists():
        return 1  # committed lines, no file: reported as missing
    data = path.read_bytes().splitlines(keepends=True)
    return sum(map(len, data[:lines])) + (lines > len(data))
