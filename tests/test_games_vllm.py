"""Strategic games against the real vLLM server: LLM vs bot and LLM vs LLM on each training game; the recorded
token ids decode to the recorded text. Short replies, one game each: mechanisms, never the model's skill."""

from __future__ import annotations

import re

import pytest

from stratagem.agents import make_agent
from stratagem.agents.llm import LLMAgent
from stratagem.games.base import GameConfig, ReplyFormat
from stratagem.games.core import Episode
from stratagem.games.rollout import collect_episodes

pytestmark = pytest.mark.vllm

MAX_TOKENS = 32
# The grammars below make the model write whole answers, judged in the plain reply format (no forced prefix); the
# training protocol's forced prefix is exercised in tests/test_integrations_games.py.
PLAIN = GameConfig(reply=ReplyFormat(response_prefix="", open_answer=False))
# The small model rarely writes a well-formed answer unaided, which would end every game on its first turn; a
# grammar that allows any well-formed answer (legal or not) lets the games run several turns for both seats.
ANSWER_GRAMMAR = {
    "tictactoe": r"<answer><[XO]\([0-2],[0-2]\)></answer>",
    "kuhn_poker": r"<answer><(PASS|BET|FOLD|CALL)></answer>",
    "mini_hanabi": r"<answer><(Play card [0-2]|Discard card [0-2]|Reveal player \+1 (color [RY]|rank [12]))></answer>",
}


@pytest.fixture(scope="module")
def tokenizer(vllm_server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vllm_server.model_path)


def _llm(vllm_server, game):
    return make_agent("llm:base", base_url=vllm_server.base_url, max_tokens=MAX_TOKENS, seed=0,
                      extra_body={"structured_outputs": {"regex": ANSWER_GRAMMAR[game]}})


def _check_llm_turns(ep: Episode, llm_seats: set[int], tokenizer) -> None:
    assert ep.turns, "an episode has at least one turn"
    for t in ep.turns:
        if t.seat not in llm_seats:
            assert t.prompt_token_ids is None and t.adapter is None
            continue
        assert t.adapter == "base"
        assert t.prompt_token_ids and t.completion_token_ids
        assert len(t.logprobs) == len(t.completion_token_ids) <= MAX_TOKENS
        assert all(lp <= 0.0 for lp in t.logprobs)
        assert tokenizer.decode(t.completion_token_ids, skip_special_tokens=True) == t.response
        # the prompt is the chat template applied to the messages the turn saw
        expected = tokenizer.apply_chat_template(t.messages, add_generation_prompt=True, tokenize=True)
        expected = expected if isinstance(expected, list) else expected["input_ids"]
        assert t.prompt_token_ids == list(expected)
    assert sum(t.reward for t in ep.turns if t.seat == 0) == pytest.approx(ep.returns[0])


@pytest.mark.parametrize("game", ["tictactoe", "kuhn_poker", "mini_hanabi"])
async def test_llm_against_a_bot(vllm_server, tokenizer, game):
    (ep,) = await collect_episodes(game, [_llm(vllm_server, game), make_agent("random")], 1, seed=1,
                                   config=PLAIN)
    _check_llm_turns(ep, {0}, tokenizer)
    assert len(ep.turns) >= 2 and ep.turns[0].illegal_reason is None


class LegalOnly(LLMAgent):
    """The LLM agent with each reply constrained to one of the turn's legal actions, so that a game between two
    of them always runs to its natural end and both seats act."""

    def request(self, observation):
        kw = super().request(observation)
        regex = "<answer>(" + "|".join(re.escape(a) for a in observation.legal_actions) + ")</answer>"
        kw["extra_body"] = {**kw["extra_body"], "structured_outputs": {"regex": regex}}
        return kw


@pytest.mark.parametrize("game", ["tictactoe", "kuhn_poker", "mini_hanabi"])
async def test_llm_self_play(vllm_server, tokenizer, game):
    llm = LegalOnly(base_url=vllm_server.base_url, model="base", max_tokens=MAX_TOKENS, seed=0)
    (ep,) = await collect_episodes(game, [llm, llm], 1, seed=2, config=PLAIN)
    _check_llm_turns(ep, {0, 1}, tokenizer)
    assert {t.seat for t in ep.turns} == {0, 1} and ep.end_reason != "illegal"
    assert all(t.illegal_reason is None for t in ep.turns)
    # a seat's later prompt holds its own earlier reply, never the other seat's
    later = ep.seat_turns(0)[-1].messages
    own = [m["content"] for m in later if m["role"] == "assistant"]
    assert own == [t.response for t in ep.seat_turns(0)[:-1]]


async def test_an_unconstrained_over_long_reply_ends_the_game(vllm_server):
    # min_tokens = max_tokens: the reply is cut at the limit whatever the model would have said
    llm = make_agent("llm:base", base_url=vllm_server.base_url, max_tokens=4, seed=0, extra_body={"min_tokens": 4})
    (ep,) = await collect_episodes("kuhn_poker", [llm, make_agent("random")], 1, config=PLAIN)
    assert ep.turns[0].info["finish_reason"] == "length" and ep.turns[0].illegal_reason.startswith("over-long")
    assert ep.returns[0] == -11.0 and ep.end_reason == "illegal"
