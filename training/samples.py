"""Turn episodes into the token sequences the trainer scores.

The tokens are exactly those the server saw and sampled (`Turn.prompt_token_ids + Turn.completion_token_ids`),
never re-tokenized text: a re-tokenization can shift the response by a token and silently train on the wrong
targets. Losses are taken only on response tokens. When a seat's turns are prefix-consistent (turn k+1's prompt
starts with turn k's prompt + completion, as in a growing chat), the whole conversation is one sequence and each
token is computed once; otherwise every turn is its own sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from stratagem.games.core import Episode, Turn


@dataclass
class Act:
    """One trained turn: where it comes from and the keys the loss aggregates by."""

    episode: int
    turn: int
    seat: int
    game: str
    role: str
    n_tokens: int

    @property
    def trajectory(self) -> tuple[int, int]:
        return (self.episode, self.seat)

    @property
    def group(self) -> tuple[str, str]:
        return (self.game, self.role)


@dataclass
class Sample:
    """One sequence. `positions[i]` is the index in `input_ids` of the i-th trained (response) token; its
    log-prob comes from the logits at positions[i] - 1. `acts[i]` indexes Batch.acts; `old_logprobs[i]` is the
    sampling log-prob recorded at rollout (nan when the endpoint gave none). `role`: the adapter role of its turns
    (`adapter_role`), which trains it under trainer.adapters per_role. `behaviour`: the policy that sampled its turns
    (their `Turn.adapter`: base, iter-k; one seat of one episode, so one policy), whose log-probs are the importance
    ratio's denominator (older than the trained one under loop.async_rollout)."""

    input_ids: list[int]
    positions: list[int] = field(default_factory=list)
    acts: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    role: str = ""
    behaviour: str = ""


@dataclass
class Batch:
    acts: list[Act]
    samples: list[Sample]
    dropped: int = 0  # acts longer than max_seq_len, left out

    @property
    def n_trained_tokens(self) -> int:
        return sum(len(s.positions) for s in self.samples)

    @property
    def n_input_tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)


def adapter_role(turn: Turn) -> str:
    """The role whose adapter a turn trains under per-role adapters: the faction in a team game (the mystery's
    culprit or civilian, not the character), else the seat's role (X, O, player_0, ...)."""
    return turn.faction or turn.role


def has_tokens(turn: Turn) -> bool:
    return bool(turn.prompt_token_ids) and bool(turn.completion_token_ids)


def _ids(turn: Turn) -> tuple[list[int], list[int]]:
    """(prompt, completion) token ids of a turn that carries them (see `has_tokens`)."""
    if turn.prompt_token_ids is None or turn.completion_token_ids is None:
        raise ValueError(f"seat {turn.seat} ({turn.role}) turn has no token ids; only turns with has_tokens train")
    return turn.prompt_token_ids, turn.completion_token_ids


def _extends(prev: Turn, nxt: Turn) -> bool:
    prev_prompt, prev_completion = _ids(prev)
    seen = list(prev_prompt) + list(prev_completion)
    return list(_ids(nxt)[0][: len(seen)]) == seen


def _old_logprobs(turn: Turn, where: str) -> list[float]:
    completion = _ids(turn)[1]
    if turn.logprobs is None:
        return [math.nan] * len(completion)
    if len(turn.logprobs) != len(completion):
        raise ValueError(f"{where}: {len(turn.logprobs)} log-probs for {len(completion)} completion "
                         "tokens; expected one sampling log-prob per completion token")
    return [float(x) for x in turn.logprobs]


def build_batch(episodes: list[Episode], selected: Callable[[int, int], bool], *, pack: bool = True,
                max_seq_len: int | None = None) -> Batch:
    """Collect the turns `selected(episode_index, turn_index)` that carry token ids into sequences.

    With `pack`, consecutive trained turns of one seat share a sequence while each extends the previous one and was
    sampled by the same policy (a sequence has one `behaviour`), and the sequence stays within max_seq_len; a single
    turn longer than max_seq_len is dropped and counted."""
    acts: list[Act] = []
    samples: list[Sample] = []
    dropped = 0
    for i, ep in enumerate(episodes):
        for seat in sorted({t.seat for t in ep.turns}):
            chain: list[tuple[int, Turn]] = []
            for j, t in enumerate(ep.turns):
                if t.seat != seat or not selected(i, j) or not has_tokens(t):
                    continue
                prompt_ids, completion_ids = _ids(t)
                length = len(prompt_ids) + len(completion_ids)
                if max_seq_len is not None and length > max_seq_len:
                    dropped += 1
                    continue
                if chain and not (pack and _extends(chain[-1][1], t) and t.adapter == chain[-1][1].adapter):
                    samples.append(_sample(chain, acts, i, ep))
                    chain = []
                chain.append((j, t))
            if chain:
                samples.append(_sample(chain, acts, i, ep))
    return Batch(acts=acts, samples=samples, dropped=dropped)


def _sample(chain: list[tuple[int, Turn]], acts: list[Act], i: int, ep: Episode) -> Sample:
    last_prompt, last_completion = _ids(chain[-1][1])
    s = Sample(input_ids=list(last_prompt) + list(last_completion), role=adapter_role(chain[-1][1]),
               behaviour=chain[-1][1].adapter or "")
    for j, t in chain:
        a = len(acts)
        prompt_ids, completion_ids = _ids(t)
        n = len(completion_ids)
        acts.append(Act(episode=i, turn=j, seat=t.seat, game=ep.game, role=t.role, n_tokens=n))
        start = len(prompt_ids)
        s.positions.extend(range(start, start + n))
        s.acts.extend([a] * n)
        s.old_logprobs.extend(_old_logprobs(t, f"episode {ep.id or i} turn {j}"))
    return s


def mismatched_samples(episodes: list[Episode], batch: Batch, pairs: list[tuple[int, int]]) -> list[Sample]:
    """Sequences pairing act i's prompt with act j's response (token ids concatenated, as sampled), scored by
    MARO for its KL reference point."""
    out = []
    for i, j in pairs:
        a, b = batch.acts[i], batch.acts[j]
        asked = episodes[a.episode].turns[a.turn]
        prompt = list(_ids(asked)[0])
        reply = list(_ids(episodes[b.episode].turns[b.turn])[1])
        out.append(Sample(input_ids=prompt + reply, positions=list(range(len(prompt), len(prompt) + len(reply))),
                          acts=[i] * len(reply), old_logprobs=[math.nan] * len(reply), role=adapter_role(asked)))
    return out
