"""Training objectives by name: the registry of losses the trainer's one update path runs (after verl's policy-loss
registry). The formulas live in losses.py; an objective here says what it needs before the update (reference or old
log-probs), what it recomputes per mini-batch, and how a micro-batch's loss is summed.

    @register_loss("my_loss")
    class MyLoss(Objective):
        labels = None               # trains on an estimator's per-act advantages (Targets.advantages)
        def loss(self, trainer, batch, mb, logps, state): ...

A loss declares its inputs: `labels = None` trains on per-act advantages and pairs with any registered advantage
estimator (`loop.loss`); `labels = "NAME"` trains on the per-act labels of the label producer registered as NAME
(`register_labels`, as MARO's are) and is selected by `loop.algo` directly. Either way its `prepare` receives one
`Targets`.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from stratagem.games.core import Episode
from stratagem.registries import Registry
from stratagem.training.losses import (
    MAROConfig,
    PPOConfig,
    aggregation_weights,
    has_mismatched_pair,
    kl_reference_point,
    maro_act_loss,
    maro_labels,
    mismatched_pairs,
    ppo_token_loss,
)
from stratagem.training.reference import endpoint_logprobs
from stratagem.training.samples import Batch, Sample, mismatched_samples


@dataclass
class Targets:
    """What an update trains toward, per act of the batch (`batch.acts` order): `advantages` (an estimator's), or
    `labels` (desirable or not) with the `episodes` and `rng` a loss needs to draw pairs from, or fixed `mismatched`
    samples (tests, benchmarks). `behaviour`: the LoRA weights (LoRATrainer.lora_snapshot) of the older policies
    that sampled some of the batch (loop.async_rollout), by policy name: a sample whose `behaviour` names one of them
    is stale, and its old log-probs are that policy's; every other sample was sampled by the trainer's current
    weights."""

    advantages: list[float] | None = None
    labels: list[bool] | None = None
    episodes: list[Episode] | None = None
    rng: random.Random | None = None
    mismatched: list[Sample] | None = None
    behaviour: dict[str, dict[str, torch.Tensor]] | None = None


# label producers by name: (episodes, learner, the loss's config section, rng) -> {(episode, turn): desirable}
LabelFn = Callable[[list[Episode], Callable[[Episode, int], bool], Any, random.Random], dict[tuple[int, int], bool]]
_LABELS: Registry[LabelFn] = Registry("label producer", plugins="losses")
register_labels = _LABELS.register
get_labels = _LABELS.get
register_labels("maro")(maro_labels)


class Objective:
    """One training objective. The trainer calls, per update: `prepare` once (no grad), then for each epoch and
    mini-batch `on_minibatch`, and for each micro-batch `loss` (its returned losses summed over a mini-batch's
    micro-batches give the mini-batch loss), and finally `summary` with the summed statistics."""

    name: str  # the name it is registered under (set by register_loss)
    labels: str | None = None  # the label producer this loss trains on; None: an estimator's advantages
    config_section: str | None = None  # the RunConfig section holding this objective's options

    @property
    def wants_entropy(self) -> bool:
        """Whether `loss` reads the policy's entropy (state["entropy"]: the micro-batch's, per sample)."""
        return False

    def __init__(self, config: Any = None):
        self.config = config

    def mini_batches(self, trainer: Any, batch: Batch) -> list[list[int]]:
        """The update's mini-batches (sample indices, one optimizer step each); the same on every call."""
        return trainer.mini_batches(len(batch.samples))

    def prepare(self, trainer: Any, batch: Batch, targets: Targets) -> dict[str, Any]:
        return {"targets": targets}

    def on_minibatch(self, trainer: Any, batch: Batch, group: list[int], state: dict[str, Any]) -> None:
        pass

    def loss(self, trainer: Any, batch: Batch, mb: list[int], logps: list[torch.Tensor], state: dict[str, Any],
             first_step: bool) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def summary(self, sums: dict[str, float], batch: Batch, state: dict[str, Any]) -> dict[str, float]:
        return dict(sums)


_LOSSES: Registry[type[Objective]] = Registry("loss", plugins="losses")
unregister_loss = _LOSSES.unregister
get_loss = _LOSSES.get


def register_loss(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def deco(cls: type[Objective]) -> type[Objective]:
        _LOSSES.register(name)(cls)
        cls.name = name
        return cls

    return deco


def loss_names(uses_advantages: bool | None = None) -> list[str]:
    """Registered losses; `uses_advantages`: only those that train on advantages (True) or on labels (False)."""
    return sorted(n for n, c in _LOSSES.items().items()
                  if uses_advantages is None or (c.labels is None) == uses_advantages)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)


@register_loss("ppo")
class ClippedPolicyLoss(Objective):
    """MARS's objective: the per-token clipped surrogate with dual clip and the k3 KL loss to the base model
    (losses.ppo_token_loss), tokens aggregated as `ppo.aggregation` says: per turn, trajectory and role by default
    (losses.nested_mean_weights), or as MARSHAL's code does (per trajectory, or per token). `targets` are the per-act
    advantages."""

    config_section = "ppo"

    @property
    def wants_entropy(self) -> bool:
        return bool(self.config is not None and self.config.entropy_coef > 0)

    def prepare(self, trainer, batch, targets):
        cfg: PPOConfig = self.config or PPOConfig()
        samples = batch.samples
        want_ref = cfg.kl_coef > 0 or trainer.config.track_kl
        # old, reference and policy log-probs in the update's own micro-batches: the same padded shapes give the
        # same low-precision numerics, so at the first step the ratio is exactly 1 (and the KL exactly 0 while
        # LoRA's B is still zero)
        groups = trainer.mini_batches(len(samples))
        t0 = time.perf_counter()
        if targets.advantages is None:
            raise ValueError("the ppo loss trains on per-act advantages: Targets.advantages is None")
        state: dict[str, Any] = {"adv": list(targets.advantages), "w": aggregation_weights(cfg.aggregation, batch.acts),
                                 "ref": reference_logprobs(trainer, samples, groups, cfg) if want_ref else None}
        t1 = time.perf_counter()
        state["endpoint"] = [torch.tensor(s.old_logprobs, dtype=torch.float32) for s in samples]
        behaviour = targets.behaviour or {}
        state["stale"] = {i for i, s in enumerate(samples) if s.behaviour in behaviour}
        if cfg.old_logprobs == "trainer":
            state["old"] = behaviour_logprobs(trainer, samples, groups, behaviour)
        else:
            state["old"] = state["endpoint"]  # the server's sampling log-probs: the behaviour policy's already
        state["pass_s"] = {"ref_s": t1 - t0, "old_s": time.perf_counter() - t1}
        state["temperature"] = trainer.temperature
        return state

    def loss(self, trainer, batch, mb, logps, state, first_step):
        cfg: PPOConfig = self.config or PPOConfig()
        samples = batch.samples
        logp = torch.cat(logps)
        dev = logp.device
        acts = [a for i in mb for a in samples[i].acts]
        for i, lp in zip(mb, logps):
            if state["old"][i] is None:  # a first-step sample (see prepare): kept for later epochs too
                state["old"][i] = lp.detach().float().cpu()
        old = torch.cat([state["old"][i] for i in mb]).to(dev)
        adv = torch.tensor([state["adv"][a] for a in acts], device=dev, dtype=torch.float32)
        w = torch.tensor([state["w"][a] for a in acts], device=dev, dtype=torch.float32)
        ref = torch.cat([state["ref"][i] for i in mb]).to(dev) if state["ref"] is not None else None
        tok_loss, st = ppo_token_loss(logp, old, adv, cfg, ref)
        ent = torch.cat(state["entropy"]).to(dev) if self.wants_entropy else None
        if ent is not None:  # aggregated as the token losses are (MARSHAL's agg_loss of the entropy)
            tok_loss = tok_loss - cfg.entropy_coef * ent
        loss = (w * tok_loss).sum()
        sums = {"loss": float(loss.detach()), "clipped_tokens": float(st["clipped"].sum()),
                "ratio_sum": float(st["ratio"].sum())}
        if ent is not None:
            sums["entropy_sum"] = float(ent.detach().sum())
        if first_step:  # over the current policy's samples (a stale one's ratio starts away from 1)
            cur = torch.tensor([i not in state.get("stale", ()) for i in mb for _ in samples[i].positions], device=dev,
                               dtype=torch.bool)
            sums["first_step_tokens"] = float(cur.sum())
            sums["first_step_outside"] = float(st["clipped"][cur].sum())
            sums["first_step_abs_log_ratio"] = float((logp.detach().float() - old.float())[cur].abs().sum())
        if "kl" in st:
            sums["kl_sum"] = float(st["kl"].sum())
        return loss, sums

    def summary(self, sums, batch, state):
        n = max(batch.n_trained_tokens * max(state.get("epochs", 1), 1), 1)
        out = {"loss": sums.get("loss", 0.0), "clip_frac": sums.get("clipped_tokens", 0.0) / n,
               "ratio_mean": sums.get("ratio_sum", 0.0) / n,
               "clip_frac_first_step": sums.get("first_step_outside", 0.0) / max(sums.get("first_step_tokens", 0), 1),
               # mean |log ratio| at the first step: exactly 0 when old and new log-probs share dtype and layout
               "first_step_abs_log_ratio": sums.get("first_step_abs_log_ratio", 0.0)
               / max(sums.get("first_step_tokens", 0), 1)}
        if "kl_sum" in sums:
            out["kl"] = sums["kl_sum"] / n
        if "entropy_sum" in sums:
            out["entropy"] = sums["entropy_sum"] / n  # mean over trained tokens and epochs
        cfg: PPOConfig = self.config or PPOConfig()
        if cfg.old_logprobs == "trainer" and state.get("old") and all(o is not None for o in state["old"]):
            ratio = torch.exp(_cat(state["old"]) - _cat(state["endpoint"]))  # the endpoint's vs the trainer's own
            known = ~torch.isnan(ratio)
            if known.any() and state.get("temperature", 1.0) == 1.0:
                outside = (ratio[known] - ratio[known].clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)).abs() > 0
                out["endpoint_clip_frac"] = float(outside.float().mean())
        out.update(state.get("pass_s", {}))
        return out


def reference_logprobs(trainer: Any, samples: list[Sample], groups: list[list[int]],
                       cfg: PPOConfig) -> list[torch.Tensor]:
    """The reference policy's log-probs at the trained tokens: the trainer's base model in the update's mini-batches,
    or (ppo.reference endpoint) vLLM's prompt log-probs from a server of the base model."""
    if cfg.reference == "endpoint":
        return endpoint_logprobs(samples, cfg.reference_url, cfg.reference_model)
    return trainer.score(samples, reference=True, groups=groups)


def behaviour_logprobs(trainer: Any, samples: list[Sample], groups: list[list[int]],
                       behaviour: dict[str, dict[str, torch.Tensor]]) -> list[torch.Tensor | None]:
    """Old log-probs scored by the trainer in the update's mini-batches `groups`: each sample's under the policy that
    sampled it. A stale sample (its `behaviour` a key of `behaviour`: loop.async_rollout) is scored under that
    policy's LoRA weights, in every mini-batch; one of the current policy in the mini-batches after the first only:
    the first step's old log-probs are its own policy's (the weights have not moved yet), taken from that step's
    forward (loss, first_step) instead of a pass of their own, so they are None here."""
    old: list[torch.Tensor | None] = [None] * len(samples)
    passes: list[tuple[dict[str, torch.Tensor] | None, list[list[int]]]] = \
        [(None, [[i for i in g if samples[i].behaviour not in behaviour] for g in groups[1:]])]
    for name in sorted({s.behaviour for s in samples if s.behaviour in behaviour}):
        passes.append((behaviour[name], [[i for i in g if samples[i].behaviour == name] for g in groups]))
    for weights, parts in passes:
        with trainer.lora_weights(weights) if weights is not None else contextlib.nullcontext():
            scored = trainer.score(samples, groups=[g for g in parts if g])
        for i, lp in enumerate(scored):
            if lp is not None:
                old[i] = lp.float().cpu()
    return old


@register_loss("maro")
class MAROLoss(Objective):
    """MARO: per act the implicit reward r = sum over its tokens of log pi - log pi_ref, the reference point z0 from
    mismatched (prompt, response) pairs re-drawn per mini-batch, and lambda (1 - sigmoid(beta (r - z0)))
    (losses.maro_act_loss), averaged over acts."""

    labels = "maro"
    config_section = "maro"

    def mini_batches(self, trainer, batch):
        """The trainer's round-robin mini-batches over the samples with each episode's samples rotated by the
        episode's rank: dealt as they come, two seats per episode into two mini-batches would put the same seat (the
        same role) of every episode into one mini-batch, leaving z0 no mismatched pair."""
        order: list[int] = []
        episode_of = [batch.acts[s.acts[0]].episode for s in batch.samples]
        starts = [i for i in range(len(episode_of)) if i == 0 or episode_of[i] != episode_of[i - 1]]
        for rank, (a, b) in enumerate(zip(starts, starts[1:] + [len(episode_of)])):
            r = a + rank % (b - a)
            order += list(range(r, b)) + list(range(a, r))
        return [[order[i] for i in g] for g in trainer.mini_batches(len(order))]

    def prepare(self, trainer, batch, targets):
        """`targets`: the labels per act with the episodes and rng (mismatched pairs are drawn afresh for every
        mini-batch from its own acts: losses.mismatched_pairs), or with fixed mismatched samples. Refuses, before
        any model work, a batch whose mini-batches cannot all give z0 a mismatched pair."""
        if targets.labels is None:
            raise ValueError("the maro loss trains on per-act labels: Targets.labels is None")
        desirable, drawn = targets.labels, targets.episodes is not None and targets.rng is not None
        samples = batch.samples
        groups = self.mini_batches(trainer, batch)
        if drawn:
            _check_pairs(batch, groups)
        elif not targets.mismatched:
            raise ValueError("MARO needs mismatched samples for its reference point z0; got none")
        t0 = time.perf_counter()
        ref = trainer.score(samples, reference=True, groups=groups)
        ref_s = time.perf_counter() - t0
        ref_act = torch.zeros(len(batch.acts))
        for s, lp in zip(samples, ref):
            ref_act.index_add_(0, torch.tensor(s.acts, dtype=torch.long), lp.float().cpu())
        state = {"labels": torch.tensor(desirable, dtype=torch.bool), "ref_act": ref_act, "z0": torch.zeros(()),
                 "z0_sum": 0.0, "z0_n": 0, "z0_pairs": 0, "pass_s": {"ref_s": ref_s}}
        if drawn:
            state["episodes"], state["rng"] = targets.episodes, targets.rng
        else:
            state["mismatched"] = targets.mismatched
        return state

    def on_minibatch(self, trainer, batch, group, state):
        # z0 with the current weights on this mini-batch's own mismatched pairs (KTO recomputes it per batch);
        # prepare made sure there is at least one
        if "episodes" in state:
            idx = sorted({a for i in group for a in batch.samples[i].acts})
            pairs = mismatched_pairs([batch.acts[i] for i in idx], state["rng"])
            mism = mismatched_samples(state["episodes"], batch, [(idx[i], idx[j]) for i, j in pairs])
        else:
            mism = state["mismatched"]
        pol, ref = trainer.score(mism), trainer.score(mism, reference=True)
        state["z0"] = kl_reference_point(torch.stack([(p.float() - r.float()).sum().cpu()
                                                      for p, r in zip(pol, ref)]))
        state["z0_sum"] += float(state["z0"])
        state["z0_n"] += 1
        state["z0_pairs"] += len(mism)

    def loss(self, trainer, batch, mb, logps, state, first_step):
        cfg: MAROConfig = self.config or MAROConfig()
        samples = batch.samples
        lp = torch.cat(logps)
        acts = torch.tensor([a for i in mb for a in samples[i].acts], dtype=torch.long)
        uniq, inv = torch.unique(acts, return_inverse=True)
        pol = torch.zeros(len(uniq), device=lp.device, dtype=lp.dtype).index_add(0, inv.to(lp.device), lp)
        r = pol.float().cpu() - state["ref_act"][uniq]
        labels = state["labels"][uniq]
        loss = maro_act_loss(r, state["z0"], labels, cfg).sum() / len(batch.acts)
        rd = r.detach()
        return loss, {"loss": float(loss.detach()), "r_win": float(rd[labels].sum()),
                      "r_lose": float(rd[~labels].sum())}

    def summary(self, sums, batch, state):
        labels = state["labels"]
        n_win = int(labels.sum())
        n_lose = len(labels) - n_win
        passes = max(state.get("epochs", 1), 1)
        return {"loss": sums.get("loss", 0.0), "z0": state["z0_sum"] / max(state["z0_n"], 1),
                "z0_pairs": state["z0_pairs"] / max(state["z0_n"], 1),  # mismatched pairs per mini-batch
                "reward_desirable": sums.get("r_win", 0.0) / max(n_win * passes, 1),
                "reward_undesirable": sums.get("r_lose", 0.0) / max(n_lose * passes, 1),
                "desirable_acts": float(n_win), "undesirable_acts": float(n_lose), **state["pass_s"]}


class NoReferencePairs(ValueError):
    """A MARO batch whose mini-batches cannot all give z0 a mismatched pair (raised before any model work, so the
    loop can skip that iteration's update and say so)."""


def _check_pairs(batch: Batch, groups: list[list[int]]) -> None:
    """MARO's z0 needs, in every mini-batch, an act and a partner from another episode and of another role."""
    if len({a.episode for a in batch.acts}) < 2:
        raise NoReferencePairs("MARO needs acts of at least 2 episodes in every mini-batch (its reference point z0 pairs "
                         "a prompt with a response from another episode), and this batch's labelled acts all come "
                         "from one episode: set loop.episodes_per_iteration to 2 or more (a draw, or "
                         "maro.empty_side='skip', leaves an episode without labels)")
    for g, group in enumerate(groups):
        if not has_mismatched_pair([batch.acts[a] for i in group for a in set(batch.samples[i].acts)]):
            raise NoReferencePairs(f"MARO: mini-batch {g + 1} of {len(groups)} has no act with a partner from another "
                             "episode and of another role, so its reference point z0 would have no mismatched "
                             "pair: use fewer, larger mini-batches (trainer.minibatches, or a larger "
                             "trainer.sequences_per_step) or more episodes (loop.episodes_per_iteration)")
