"""The language-model agent: the request it sends and what it keeps from the endpoint's answer."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletion

from stratagem.agents.llm import LLMAgent, reply_from_completion
from stratagem.games.core import Observation

OBS = Observation(game="g", seat=0, role="x", phase="play", messages=[{"role": "user", "content": "move?"}],
                  legal_actions=["<A>"], response_prefix="<answer>")


def test_a_response_prefix_is_sent_as_a_partial_assistant_turn_to_continue():
    kw = LLMAgent(base_url="http://127.0.0.1:9/v1", model="iter-2", max_tokens=7, seed=5).request(OBS)
    assert kw["messages"][-1] == {"role": "assistant", "content": "<answer>"}
    assert kw["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False,
                                "return_token_ids": True}
    assert (kw["model"], kw["max_tokens"], kw["seed"], kw["logprobs"]) == ("iter-2", 7, 5, True)
    assert OBS.messages == [{"role": "user", "content": "move?"}]  # the observation itself is untouched


def _completion(token_ids, logprobs, text="<A></answer>", finish="stop"):
    return ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "iter-2", "prompt_token_ids": [1, 2, 3],
        "choices": [{"index": 0, "finish_reason": finish, "token_ids": token_ids,
                     "message": {"role": "assistant", "content": text},
                     "logprobs": {"content": [{"token": "t", "logprob": lp, "top_logprobs": []} for lp in logprobs]}}],
    })


def test_token_ids_and_logprobs_are_kept_as_sampled():
    r = reply_from_completion(_completion([7, 8], [-0.5, -1.25], finish="length"))
    assert (r.text, r.prompt_token_ids, r.completion_token_ids, r.logprobs) == ("<A></answer>", [1, 2, 3], [7, 8],
                                                                              [-0.5, -1.25])
    assert (r.model, r.finish_reason) == ("iter-2", "length")


def test_ids_and_logprobs_of_different_lengths_are_an_error_not_a_silent_shift():
    with pytest.raises(ValueError, match="2 token ids but 1 log-probs"):
        reply_from_completion(_completion([7, 8], [-0.5]))
