"""Experiment trackers beside TensorBoard (which always writes RUN/tb): Weights & Biases and MLflow, used only when
`loop.trackers` names them and the package is installed (`pip install wandb` / `pip install mlflow`); Stratagem
requires neither.

Each tracker gets the run's config once and every iteration's numeric metrics at step = iteration. A resumed run
continues the same tracker run: its id is kept in RUN/trackers.json. MLflow writes to $MLFLOW_TRACKING_URI, or
to RUN/mlruns when that is unset (never to the working directory); wandb follows its own environment (WANDB_MODE,
WANDB_PROJECT, default project 'stratagem'), its files under RUN/wandb.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


# name -> (the package it needs, the factory: (run_dir, config dict, saved id or None) -> (tracker, id))
TRACKERS: dict[str, tuple[str, Callable[[Path, dict, str | None], tuple[Tracker, str]]]] = {}


def register_tracker(name: str, package: str):
    def wrap(factory):
        TRACKERS[name] = (package, factory)
        return factory
    return wrap


def check_trackers(names: list[str]) -> None:
    """Raises ValueError for a name not registered or a package not installed (before anything runs)."""
    for n in names:
        if n not in TRACKERS:
            raise ValueError(f"unknown tracker {n!r}; expected some of {', '.join(sorted(TRACKERS))}")
        package = TRACKERS[n][0]
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"tracker {n!r} needs the {package} package, which is not installed here "
                             f"(pip install {package}); TensorBoard logs are written either way")
    if len(set(names)) != len(names):
        raise ValueError(f"a tracker is named twice: {names}")


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'trainer': {'lr': 1e-4}} -> {'trainer.lr': 1e-4}; lists as their JSON text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


class Trackers:
    """The trackers of one run: opened with its config, fed each iteration's numbers, closed at the end."""

    def __init__(self, names: list[str], run_dir: str | Path, config: dict):
        check_trackers(names)
        self.path = Path(run_dir) / "trackers.json"
        ids = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.open: list[Tracker] = []
        for n in names:
            tracker, ids[n] = TRACKERS[n][1](Path(run_dir), config, ids.get(n))
            self.open.append(tracker)
        if names:
            self.path.write_text(json.dumps(ids))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration"}
        for t in self.open:
            t.log(numbers, step)

    def close(self) -> None:
        for t in self.open:
            t.close()
        self.open = []


@register_tracker("wandb", "wandb")
def _wandb(run_dir: Path, config: dict, run_id: str | None) -> tuple[Tracker, str]:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "stratagem"), name=run_dir.name, dir=str(run_dir),
                     config=config, id=run_id, resume="allow")

    class W:
        def log(self, metrics: dict[str, float], step: int) -> None:
            run.log(metrics, step=step)

        def close(self) -> None:
            run.finish()
    return W(), run.id


@register_tracker("mlflow", "mlflow")
def _mlflow(run_dir: Path, config: dict, run_id: str | None) -> tuple[Tracker, str]:
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
    if run_id is None:
        run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(flat(config))
    else:
        run = mlflow.start_run(run_id=run_id)

    class M:
        def log(self, metrics: dict[str, float], step: int) -> None:
            mlflow.log_metrics(metrics, step=step)

        def close(self) -> None:
            mlflow.end_run()
    return M(), run.info.run_id
