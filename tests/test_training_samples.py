"""Episodes to token sequences: tokens exactly as sampled, loss only on responses, packing when prefix-consistent."""

import math

import pytest

from stratagem.games.core import Episode, Seat, Turn
from stratagem.training.samples import build_batch, mismatched_samples


def _turn(seat, prompt, completion, logprobs=None):
    return Turn(seat=seat, role="xo"[seat], phase="play", messages=[], response="", prompt_token_ids=prompt,
                completion_token_ids=completion, logprobs=logprobs if logprobs is not None else [-0.5] * len(completion))


def _ep(turns):
    return Episode(game="g", seed=0, seats=[Seat(0, "x", "a"), Seat(1, "o", "a")], turns=turns, returns=[0, 0])


def test_prefix_consistent_turns_pack_into_one_sequence():
    ep = _ep([_turn(0, [1, 2], [3, 4]), _turn(1, [9], [8]), _turn(0, [1, 2, 3, 4, 5], [6, 7, 2])])
    b = build_batch([ep], lambda i, j: True)
    assert len(b.samples) == 2 and b.dropped == 0
    s0 = b.samples[0]
    assert s0.input_ids == [1, 2, 3, 4, 5, 6, 7, 2]
    assert s0.positions == [2, 3, 5, 6, 7]
    assert [s0.input_ids[p] for p in s0.positions] == [3, 4, 6, 7, 2]
    assert [b.acts[a].turn for a in s0.acts] == [0, 0, 2, 2, 2]
    assert b.n_trained_tokens == 6 and b.n_input_tokens == 8 + 2


def test_inconsistent_turns_stay_separate_and_unpacked_mode():
    ep = _ep([_turn(0, [1, 2], [3, 4]), _turn(0, [1, 2, 3, 9, 5], [6])])  # the re-rendered reply differs
    b = build_batch([ep], lambda i, j: True)
    assert [s.input_ids for s in b.samples] == [[1, 2, 3, 4], [1, 2, 3, 9, 5, 6]]
    consistent = _ep([_turn(0, [1, 2], [3, 4]), _turn(0, [1, 2, 3, 4, 5], [6])])
    assert len(build_batch([consistent], lambda i, j: True, pack=False).samples) == 2


def test_selection_missing_tokens_and_length_limit():
    bot = Turn(seat=1, role="o", phase="play", messages=[], response="", action="a")
    ep = _ep([_turn(0, [1, 2], [3]), bot, _turn(0, list(range(50)), [7])])
    b = build_batch([ep], lambda i, j: j != 0, max_seq_len=20)
    assert b.samples == [] and b.dropped == 1
    b = build_batch([ep], lambda i, j: j == 0)
    assert len(b.acts) == 1 and b.samples[0].old_logprobs == [-0.5]


def test_missing_and_inconsistent_logprobs():
    ep = _ep([Turn(seat=0, role="x", phase="p", messages=[], response="", prompt_token_ids=[1], completion_token_ids=[2, 3])])
    assert all(math.isnan(x) for x in build_batch([ep], lambda i, j: True).samples[0].old_logprobs)
    ep.turns[0].logprobs = [-1.0]
    with pytest.raises(ValueError, match="1 log-probs for 2 completion tokens"):
        build_batch([ep], lambda i, j: True)


def test_mismatched_samples_pair_prompt_with_other_response():
    ep = _ep([_turn(0, [1, 2], [3]), _turn(1, [5], [6, 7])])
    b = build_batch([ep], lambda i, j: True)
    m = mismatched_samples([ep], b, [(0, 1), (1, 0)])
    assert [s.input_ids for s in m] == [[1, 2, 6, 7], [5, 3]]
    assert [s.positions for s in m] == [[2, 3], [1]]
