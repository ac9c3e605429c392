"""The run's policies on its servers: their served names, the installer that puts iter-k on the servers and verifies
it there, and the LoRA weights of recent policies for the importance ratio of stale episodes."""

from __future__ import annotations

import logging
from typing import Any

import torch

from stratagem import faults
from stratagem.games.core import Episode
from stratagem.games.registry import role_model
from stratagem.integrations.servers import Serving
from stratagem.training.run_store import RunStore
from stratagem.training.trainer import LoRATrainer

log = logging.getLogger(__name__)


def adapter_name(iteration: int) -> str:
    """Served name of the policy after iteration k (`base` before the first update)."""
    return "base" if iteration == 0 else f"iter-{iteration}"


def policy_version(name: str) -> int:
    """k of the policy named `name` (adapter_name's inverse: base is 0)."""
    return 0 if name == "base" else int(name.removeprefix("iter-"))


class PolicyServer:
    """Puts policy iter-k on the run's servers and verifies it there: as a LoRA adapter named iter-k, or merged into
    the weights served as `base`; with per-role adapters (`roles`), each role's as iter-k-ROLE, each verified.
    `served(k)` is the model name that samples iter-k (per role: the prefix of its roles' names)."""

    def __init__(self, serving: Serving, store: RunStore, merged: bool, roles: list[str] | None = None):
        self.serving, self.store, self.merged, self.roles = serving, store, merged, list(roles or [])
        self.installed: set[int] = set()  # adapters on the servers now (LoRA serving); a restart empties it

    def served(self, k: int) -> str:
        return "base" if self.merged else adapter_name(k)

    def install(self, k: int) -> dict[str, Any]:
        faults.point("install")
        if self.roles:
            checks = {r: self.serving.install(role_model(adapter_name(k), r), self.store.adapter_dir(k) / r,
                                              merged=False) for r in self.roles}
            check = {f"{r}/{key}": v for r, c in checks.items() for key, v in c.items()}
            for key in ("mean_abs_diff", "max_abs_diff"):  # the worst role's gap, under the shared names
                vals = [c[key] for c in checks.values() if isinstance(c.get(key), (int, float))]
                if vals:
                    check[key] = max(vals)
        else:
            check = self.serving.install(adapter_name(k), self.store.adapter_dir(k), merged=self.merged)
        self.installed = {k} if self.merged else self.installed | {k}
        return check

    def ensure(self, iterations: list[int]) -> None:
        """Put the adapters of these past iterations on the servers where they are not (league opponents, after a
        resume or a restart)."""
        for j in iterations:
            if j not in self.installed:
                self.install(j)

    def restart(self) -> None:
        self.serving.restart()  # back to the base weights, no adapters
        self.installed = set()


class BehaviourWeights:
    """The LoRA weights of the recent policies, so that a stale episode's old log-probs (the importance ratio's
    denominator) are those of the adapter that sampled it (loop.async_rollout: iteration k's games are played by
    iter-(k-2) while iter-(k-1) trains). Kept in memory: the trainer's after each update, the newest
    max_staleness + 1; one not kept (iter-j, a resumed run's) is read from its adapter in the store."""

    def __init__(self, trainer: LoRATrainer, store: RunStore, done: int, keep: int):
        self.trainer, self.store, self.keep = trainer, store, keep
        self.saved: dict[int, dict[str, torch.Tensor]] = {}
        self.record(done)  # the trainer's weights now: iter-done's (at 0 the starting ones, LoRA's B zero: base)

    def record(self, k: int) -> None:
        """The trainer's weights are policy iter-k's (after iteration k's update)."""
        self.saved[k] = self.trainer.lora_snapshot()
        for j in [j for j in self.saved if j < k - self.keep]:
            del self.saved[j]

    def of(self, episodes: list[Episode]) -> dict[str, dict[str, torch.Tensor]]:
        """The weights of each older policy that sampled some of `episodes` (behaviour_policy of those with a
        staleness above 0), by its name, which build_batch puts in Sample.behaviour."""
        stale = {ep.metrics["behaviour_policy"] for ep in episodes if ep.metrics.get("staleness", 0) > 0}
        return {name: self.weights(name) for name in sorted(stale)}

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        j = policy_version(name)
        if j not in self.saved:
            self.saved[j] = self.trainer.read_lora_weights(self.store.adapter_dir(j)) if j else \
                {n: torch.zeros_like(p) for n, p in self.trainer.lora_snapshot().items()}  # base: no LoRA delta
        return self.saved[j]
