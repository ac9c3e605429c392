"""The two training objectives: the PPO-style policy loss for the advantage estimators, and the MARO loss.

Both are written over flat per-token (or per-act) tensors plus weights fixed for the whole batch beforehand, so a
batch split into micro-batches for gradient accumulation sums to exactly the same loss as the whole batch.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stratagem.games.core import Episode
from stratagem.training.samples import Act


@dataclass
class PPOConfig:
    clip_eps: float = field(default=0.2, metadata={"help": "PPO clip range: the ratio is clipped to [1-eps, 1+eps].",
                                                   "min": 0.0})
    dual_clip: bool = field(default=True, metadata={"help": "Dual clip: for negative advantages cap the token "
                            "loss at c * |A| (Ye et al. 2020; on in MARS)."})
    dual_clip_c: float = field(default=1.4, metadata={"help": "The dual-clip constant c (> 1).", "min": 1.0})
    kl_coef: float = field(default=0.2, metadata={"help": "Weight of the k3 KL loss to the reference policy "
                           "(the base model, adapter disabled; MARS: 0.2); 0 turns it off.", "min": 0.0})
    old_logprobs: str = field(default="trainer", metadata={"help": "Denominator of the ratio: 'trainer' recomputes "
                              "the old log-probs with the trainer's own weights and dtype before the iteration's "
                              "first update (as MARS's code and TRL do: the ratio starts at exactly 1); 'endpoint' "
                              "uses the log-probs the server reported when sampling (vLLM reports the untempered "
                              "distribution, so it needs sampling.temperature 1).",
                              "choices": ("trainer", "endpoint")})
    reference: str = field(default="trainer", metadata={"help": "Where the KL's reference log-probs come from: "
                           "'trainer' (a no-grad pass of the base model, the adapter disabled) or 'endpoint' (vLLM's "
                           "prompt log-probs from a server that serves the unmodified base model as "
                           "ppo.reference_model at ppo.reference_url, e.g. an idle inference server on other cores "
                           "or GPUs: one pass fewer in the update). vLLM reports untempered log-probs, so 'endpoint' "
                           "needs trainer.temper_logprobs off or sampling.temperature 1.",
                           "choices": ("trainer", "endpoint")})
    reference_url: str = field(default="", metadata={"help": "With reference 'endpoint': the server's base URL "
                               "(http://HOST:PORT/v1). Not the run's own server when the policy is merged into its "
                               "weights (its base is then the policy)."})
    reference_model: str = field(default="base", metadata={"help": "With reference 'endpoint': the served name "
                                 "of the unmodified base model."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Weight of an entropy bonus: the loss gets "
                                "-entropy_coef x the policy's entropy at each trained token, aggregated as the token "
                                "losses are (MARSHAL's entropy_loss_coef: 0 in self-play, 0.01 against the fixed "
                                "opponent). Costs a softmax over the vocabulary per trained token.", "min": 0.0})
    aggregation: str = field(default="nested", metadata={"help": "How token losses make the loss: 'nested' (MARS's "
                             "paper: mean per turn, trajectory, (game, role), then roles), 'trajectory' (MARSHAL's "
                             "default loss_agg_mode as its code runs it: token mean per trajectory, then the mean "
                             "over trajectories) or 'token' (token mean over the batch; MARSHAL's fixed-opponent "
                             "runs).", "choices": ("nested", "trajectory", "token")})


@dataclass
class MAROConfig:
    beta: float = field(default=0.1, metadata={"help": "Scale of the implicit reward inside the sigmoid.",
                                               "min": 0.0})
    lambda_win: float = field(default=1.0, metadata={"help": "Weight of desirable acts (the winning faction's).",
                                                     "min": 0.0})
    lambda_lose: float = field(default=1.0, metadata={"help": "Weight of undesirable acts (the losing faction's).",
                                                      "min": 0.0})
    empty_side: str = field(default="all", metadata={"help": "When one side of an episode has no act to label "
                            "(N_reward = 0: no trained seat on it, or only failed acts): 'all' labels every "
                            "act of the other side, 'skip' drops the episode.",
                            "choices": ("all", "skip")})
    failed_acts: str = field(default="undesirable", metadata={"help": "Acts whose reply did not parse into a legal "
                             "action: 'undesirable' (counted on the losing side whatever the faction's outcome) or "
                             "'exclude' (no label).", "choices": ("undesirable", "exclude")})


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


def trajectory_mean_weights(acts: list[Act]) -> list[float]:
    """Per-token weights of MARSHAL's default 'seq-mean-token-sum' as `agg_loss` implements it (a token MEAN per
    sequence, despite the name, then the mean over sequences): one sequence there is one trajectory (every trained
    turn of one seat in one episode), so w_a = 1 / (n_tokens(traj(a)) * n_trajectories). MARSHAL averages per
    micro-batch of 2 sequences; these weights average over the whole batch (same expectation, and the trainer keeps
    every optimizer step at the whole batch's scale)."""
    tokens_per_traj: Counter = Counter()
    for a in acts:
        tokens_per_traj[a.trajectory] += a.n_tokens
    n_traj = len(tokens_per_traj)
    return [1.0 / (tokens_per_traj[a.trajectory] * n_traj) for a in acts]


def token_mean_weights(acts: list[Act]) -> list[float]:
    """Per-token weights of a plain token mean over the batch (MARSHAL's 'token-mean', its fixed-opponent runs):
    long replies weigh in proportion to their length."""
    n = sum(a.n_tokens for a in acts)
    return [1.0 / n] * len(acts) if n else [0.0] * len(acts)


AGGREGATIONS: dict[str, Callable[[list[Act]], list[float]]] = {
    "nested": nested_mean_weights, "trajectory": trajectory_mean_weights, "token": token_mean_weights}


def aggregation_weights(mode: str, acts: list[Act]) -> list[float]:
    """The per-token weight of each act under `PPOConfig.aggregation` `mode` (weights sum to 1 over the tokens)."""
    try:
        fn = AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(f"PPOConfig.aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}") from None
    return fn(acts)


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
    """Step-wise outcome decomposition with faction balancing over ACTS: {(episode, turn): desirable}.

    Per episode, every act of a trained seat inherits its side's outcome: C_win = the acts of the seats whose faction
    won (or, without factions, of the winners), C_lose = the acts of the other trained seats. A failed act (the reply
    did not parse into a legal action: `Turn.illegal_reason` set) is, with `cfg.failed_acts='undesirable'` (the
    default), put in C_lose whatever its faction's outcome; with 'exclude' it gets no label at all. Then
    N_reward = min(|C_win|, |C_lose|) acts are kept on each side: the larger side's acts are subsampled with `rng`
    (uniformly, without replacement, over acts, not seats), so a 1-vs-4 game does not drown the lone side. When
    one side is empty, `cfg.empty_side` decides ('all': the other side's acts all get labels; 'skip': none). An
    episode without a winner (a draw) gives no labels.

    Example: the culprit (lost) with 2 legal acts, four civilians (won) with 2 acts each, one of which failed:
    C_win = the 4 legal civilian acts, C_lose = 2 culprit acts + 4 failed acts = 6; N_reward = 4: every legal
    civilian act is desirable, and 4 of the 6 losing-side acts, drawn with `rng`, are undesirable."""
    if cfg.empty_side not in ("all", "skip"):
        raise ValueError(f"MAROConfig.empty_side must be 'all' or 'skip', got {cfg.empty_side!r}")
    if cfg.failed_acts not in ("undesirable", "exclude"):
        raise ValueError(f"MAROConfig.failed_acts must be 'undesirable' or 'exclude', got {cfg.failed_acts!r}")
    labels: dict[tuple[int, int], bool] = {}
    for i, ep in enumerate(episodes):
        trained = {s.index for s in ep.seats if learner(ep, s.index)}
        if ep.winning_faction is not None:
            won = {s.index for s in ep.seats if s.faction == ep.winning_faction}
        elif ep.winners:
            won = set(ep.winners)
        else:
            continue
        win: list[int] = []
        lose: list[int] = []
        for j, t in enumerate(ep.turns):
            if t.seat not in trained:
                continue
            if t.illegal_reason is not None:
                if cfg.failed_acts == "undesirable":
                    lose.append(j)
            elif t.seat in won:
                win.append(j)
            else:
                lose.append(j)
        n = min(len(win), len(lose))
        if n > 0:
            chosen_win = win if len(win) == n else sorted(rng.sample(win, n))
            chosen_lose = lose if len(lose) == n else sorted(rng.sample(lose, n))
        elif cfg.empty_side == "all":
            chosen_win, chosen_lose = win, lose
        else:
            continue
        labels.update({(i, j): True for j in chosen_win})
        labels.update({(i, j): False for j in chosen_lose})
    return labels


def mismatched_pairs(acts: list[Act] | int, rng: random.Random | None = None) -> list[tuple[int, int]]:
    """(prompt of act i, response of act j) pairs for MARO's KL reference point z0, over the acts of ONE mini-batch
    (call it again for every mini-batch, so z0 is re-estimated with the current policy on fresh pairs).

    As KTO builds its KL dataset: the acts are shuffled with `rng` (order = a permutation of 0..n-1) and each act is
    paired with the response of the next act in that order (cyclically) -- here the next one that comes from a
    DIFFERENT episode AND a different character (role), so a prompt is never matched with a response to the same
    game or the same part; an act with no such partner gets no pair. Returns (i, j) indices into `acts`, in the
    shuffled order (see `pairs_in_order`).

    The old call with a count (`mismatched_pairs(n)`: act i with act i + 1) stays for callers that pass no acts."""
    if isinstance(acts, int):
        n = acts
        return [(i, (i + 1) % n) for i in range(n)] if n > 1 else []
    if rng is None:
        raise ValueError("mismatched_pairs needs an rng to shuffle the acts (as KTO does)")
    order = list(range(len(acts)))
    rng.shuffle(order)
    return pairs_in_order(acts, order)


def pairs_in_order(acts: list[Act], order: list[int]) -> list[tuple[int, int]]:
    """The pairing rule of `mismatched_pairs` for a given shuffled `order`.

    Example: acts A=(episode 0, Ann), B=(0, Ben), C=(1, Ann), D=(1, Cal) in the order [A, B, C, D]: A -> D (B is
    the same episode, C the same character), B -> C, C -> B (D is the same episode, A the same character), D -> A."""
    n = len(order)
    out = []
    for k, i in enumerate(order):
        a = acts[i]
        for step in range(1, n):
            j = order[(k + step) % n]
            if acts[j].episode != a.episode and acts[j].role != a.role:
                out.append((i, j))
                break
    return out


def has_mismatched_pair(acts: list[Act]) -> bool:
    """Whether some act of `acts` has a partner from another episode and of another role: then `pairs_in_order`
    pairs it whatever the order, so this says, before any shuffle, whether a mini-batch gives z0 a pair."""
    keys = {(a.episode, a.role) for a in acts}
    return any(e != f and r != s for e, r in keys for f, s in keys)


def kl_reference_point(mismatched_log_ratios: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean over mismatched pairs of sum_t (log pi - log pi_ref)), detached: an estimate of
    KL(pi || pi_ref) that anchors the utility without passing gradient. No pairs: z0 = 0 (MAROLoss refuses a
    mini-batch without pairs before it gets here: see objectives._check_pairs)."""
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
