"""The run directory: everything a training run writes, laid out so that a kill -9 at any moment loses nothing
that was committed and counts nothing twice.

    RUN_DIR/config.yaml          the full run configuration (what `--resume` reads back)
    RUN_DIR/episodes.jsonl       append-only: episode records, then {"commit": k, ...} once iteration k is done
    RUN_DIR/adapters/iter-k/     peft adapter + trainer_state.pt (optimizer, RNG, estimator state) of iteration k
    RUN_DIR/metrics.jsonl        one line per completed iteration
    RUN_DIR/checkpoint.json      the commit point: last completed iteration and the byte/line lengths of the logs
    RUN_DIR/tb/                  TensorBoard events
    RUN_DIR/plots/               PNG curves (`stratagem report`)

An iteration is committed by writing checkpoint.json atomically, last. On resume every log is cut back to the
lengths recorded there, so episodes and metrics of an iteration that did not finish are dropped and redone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from stratagem.files import append_line, atomic_directory, atomic_write, read_json_lines
from stratagem.games.core import Episode, read_jsonl


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

    # ---- creation and resume -----------------------------------------------------------------------------
    def create(self, config: dict[str, Any]) -> None:
        """Start a new run; refuses a directory that already holds one (resume it or pick another name)."""
        if self.checkpoint_path.exists() or self.episodes_path.exists():
            raise FileExistsError(f"{self.root} already holds a run; pass --resume to continue it or choose "
                                  "another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self.adapters_dir.mkdir(exist_ok=True)
        atomic_write(self.config_path, yaml.safe_dump(config, sort_keys=False))
        self._write_checkpoint({"iteration": 0, "episodes": 0, "episodes_bytes": 0, "metrics_lines": 0})

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run directory: no config.yaml")
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8"))

    def checkpoint(self) -> dict[str, Any]:
        if not self.checkpoint_path.exists():
            raise FileNotFoundError(f"{self.root} is not a run directory: no checkpoint.json")
        return json.loads(self.checkpoint_path.read_text(encoding="utf-8"))

    def completed_iterations(self) -> int:
        return int(self.checkpoint()["iteration"])

    def rollback(self) -> dict[str, Any]:
        """Cut episodes.jsonl and metrics.jsonl back to the last commit and drop half-written adapters: what a
        kill left behind after the commit point is discarded. Returns the checkpoint."""
        cp = self.checkpoint()
        if self.episodes_path.exists():
            with open(self.episodes_path, "r+b") as f:
                f.truncate(cp["episodes_bytes"])
        if self.metrics_path.exists():
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True)
            atomic_write(self.metrics_path, "".join(lines[: cp["metrics_lines"]]))
        for d in self.adapters_dir.glob("iter-*"):
            k = d.name.removeprefix("iter-").removesuffix(".tmp")
            if d.name.endswith(".tmp") or (k.isdigit() and int(k) > cp["iteration"]):
                shutil.rmtree(d, ignore_errors=True)
        return cp

    # ---- episodes ------------------------------------------------------------------------------------------
    def append_episode(self, episode: Episode) -> None:
        append_line(self.episodes_path, episode.to_json())

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
            trainer.model.save_pretrained(str(tmp))
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
        atomic commit point)."""
        cp = self.checkpoint()
        append_line(self.metrics_path, json.dumps(metrics, sort_keys=True))
        total = cp["episodes"] + n_episodes
        append_line(self.episodes_path, json.dumps({"commit": iteration, "episodes": total}))
        self._write_checkpoint({"iteration": iteration, "episodes": total,
                                "episodes_bytes": self.episodes_path.stat().st_size,
                                "metrics_lines": cp["metrics_lines"] + 1})

    def _write_checkpoint(self, cp: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path, json.dumps(cp))
