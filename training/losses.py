"""The two training objectives: the PPO-style policy loss for the advantage estimators, and the MARO loss.

Both are written over flat per-token (or per-act) tensors plus weights fixed for the whole batch beforehand, so a
batch split into micro-batches for gradient accumulation sums to exactly the same loss as the whole batch.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from stratagem.games.core import Episode
from stratagem.training.samples import Act


@dataclass
class PPOConfig:
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range: the ratio is clipped to [1-eps, 1+eps]."})
    dual_clip: bool = field(default=False, metadata={"help": "Dual clip: for negative advantages cap the token "
                            "loss at c * |A| (Ye et al. 2020)."})
    dual_clip_c: float = field(default=1.4, metadata={"help": "The dual-clip constant c (> 1)."})
    kl_coef: float = field(default=0.0, metadata={"help": "Weight of the k3 KL penalty to the reference policy "
                           "(the base model, adapter disabled); 0 turns it off (no reference pass)."})


@dataclass
class MAROConfig:
    beta: float = field(default=0.1, metadata={"help": "Scale of the implicit reward inside the sigmoid."})
    lambda_win: float = field(default=1.0, metadata={"help": "Weight of desirable acts (the winning faction's)."})
    lambda_lose: float = field(default=1.0, metadata={"help": "Weight of undesirable acts (the losing faction's)."})
    empty_side: str = field(default="all", metadata={"help": "When one side of an episode has no trained seat "
                            "(N_reward = 0): 'all' trains every seat of the other side, 'skip' drops the episode."})


# ---- aggregation ---------------------------------------------------------------------------------------------

def nested_mean_weights(acts: list[Act]) -> list[float]:
    """Per-token weight of each act so that sum(w * token_loss) is the MARS aggregation: token losses averaged
    per turn, turns per trajectory (one seat in one episode), trajectories per (game, role), then roles.
    w_a = 1 / (n_tokens(a) * n_turns(traj(a)) * n_trajectories(role(a)) * n_roles)."""
    turns_per_traj = Counter(a.trajectory for a in acts)
    trajs_per_group: Counter = Counter()
    for traj in turns_per_traj:
        trajs_per_group[next(a.group for a in acts if a.trajectory == traj)] += 1
    n_groups = len(trajs_per_group)
    return [1.0 / (a.n_tokens * turns_per_traj[a.trajectory] * trajs_per_group[a.group] * n_groups) for a in acts]


# ---- PPO-style policy loss -------------------------------------------------------------------------------------

def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per sampled token: exp(d) - d - 1 with d = log pi_ref - log pi.
    Non-negative, unbiased under samples from pi."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def ppo_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: PPOConfig,
                   ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate: l = -min(rho A, clip(rho, 1-eps, 1+eps) A), rho = exp(log pi - log pi_old);
    with dual clip, for A < 0: l = min(l, -c A); plus kl_coef * k3(pi, pi_ref) when a reference is given.
    pi_old is the sampling log-prob recorded at rollout; where it is missing (nan) the current log-prob, detached,
    stands in (ratio 1)."""
    old_logp = torch.where(torch.isnan(old_logp), logp.detach(), old_logp)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps)
    loss = torch.maximum(-ratio * adv, -clipped * adv)
    if cfg.dual_clip:
        loss = torch.where(adv < 0, torch.minimum(loss, -cfg.dual_clip_c * adv), loss)
    stats = {"ratio": ratio.detach(), "clipped": ((ratio - clipped).abs() > 0).float()}
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        stats["kl"] = kl.detach()
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
    return loss, stats


# ---- MARO ------------------------------------------------------------------------------------------------------

def maro_labels(episodes: list[Episode], learner: Callable[[Episode, int], bool], cfg: MAROConfig,
                rng: random.Random) -> dict[tuple[int, int], bool]:
    """Step-wise outcome decomposition with faction balancing: {(episode, turn): desirable}.

    Every act of a trained seat inherits its side's outcome: desirable when the seat's faction won (or, without
    factions, when the seat is among the winners), undesirable otherwise. Per episode only
    N_reward = min(|C_win|, |C_lose|) seats of each side, drawn with `rng`, receive labels, so a 1-vs-4 game does not
    drown the lone side. When one side has no trained seat, `cfg.empty_side` decides ('all': the other side's
    seats all get labels; 'skip': none). An episode without a winner (a draw) gives no labels."""
    if cfg.empty_side not in ("all", "skip"):
        raise ValueError(f"MAROConfig.empty_side must be 'all' or 'skip', got {cfg.empty_side!r}")
    labels: dict[tuple[int, int], bool] = {}
    for i, ep in enumerate(episodes):
        acted = {t.seat for t in ep.turns}
        seats = [s for s in ep.seats if s.index in acted and learner(ep, s.index)]
        if ep.winning_faction is not None:
            win = [s.index for s in seats if s.faction == ep.winning_faction]
        elif ep.winners:
            win = [s.index for s in seats if s.index in ep.winners]
        else:
            continue
        lose = [s.index for s in seats if s.index not in win]
        n = min(len(win), len(lose))
        if n > 0:
            chosen_win, chosen_lose = rng.sample(win, n), rng.sample(lose, n)
        elif cfg.empty_side == "all":
            chosen_win, chosen_lose = win, lose
        else:
            continue
        for j, t in enumerate(ep.turns):
            if t.seat in chosen_win:
                labels[(i, j)] = True
            elif t.seat in chosen_lose:
                labels[(i, j)] = False
    return labels


def mismatched_pairs(n: int) -> list[tuple[int, int]]:
    """(prompt of act i, response of act j != i) pairs for the KL reference point: each prompt with the next
    act's response, as KTO does. Fewer than two acts have no mismatched pair."""
    return [(i, (i + 1) % n) for i in range(n)] if n > 1 else []


def kl_reference_point(mismatched_log_ratios: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean over mismatched pairs of sum_t (log pi - log pi_ref)), detached: an estimate of
    KL(pi || pi_ref) that anchors the utility without passing gradient. No pairs: z0 = 0."""
    if mismatched_log_ratios.numel() == 0:
        return torch.zeros(())
    return mismatched_log_ratios.detach().mean().clamp(min=0)


def maro_act_loss(r: torch.Tensor, z0: torch.Tensor, desirable: torch.Tensor, cfg: MAROConfig) -> torch.Tensor:
    """Per-act MARO loss with implicit reward r = sum over response tokens of log pi - log pi_ref:
    lambda_win (1 - sigmoid(beta (r - z0))) for desirable acts, lambda_lose (1 - sigmoid(beta (z0 - r))) for
    undesirable ones."""
    u = torch.where(desirable, torch.sigmoid(cfg.beta * (r - z0)), torch.sigmoid(cfg.beta * (z0 - r)))
    lam = torch.where(desirable, torch.full_like(r, cfg.lambda_win), torch.full_like(r, cfg.lambda_lose))
    return lam * (1 - u)
