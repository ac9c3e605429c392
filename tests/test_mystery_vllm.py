"""One short murder-mystery game end to end with the real vLLM server: the default model plays every seat and
judges, through `play_mystery` (what `stratagem play mystery` runs), which writes metrics, episodes and a transcript.
Kept short for a slow CPU server: the 4-character script, 2 rounds, few tokens per act."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratagem.games.core import read_jsonl
from stratagem.games.mystery.cli import play_mystery
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.metrics import HEADLINE

pytestmark = pytest.mark.vllm


def test_play_one_short_game(vllm_server, tmp_path):
    md = tmp_path / "game.md"
    result = play_mystery("lighthouse", players="llm:base", judge="base", episodes=1, rounds=2, json_out=True,
                          transcript=str(md), base_url=vllm_server.base_url, player_max_tokens=24,
                          judge_max_tokens=16)
    saved = json.loads((tmp_path / "game.metrics.json").read_text())
    assert saved["metrics"] == result["metrics"] and saved["metrics"]["games"] == 1

    [ep] = list(read_jsonl(tmp_path / "game.jsonl"))
    # every act was on disk as it was played, before the game ended
    played = [json.loads(x) for x in (tmp_path / "game.acts.jsonl").read_text().splitlines()]
    assert [(a["seat"], a["phase"], a["response"]) for a in played] == [(t.seat, t.phase, t.response) for t in ep.turns]
    m = ep.metrics
    for k in HEADLINE:  # one game: the aggregate is that game's value
        assert saved["metrics"][k] == pytest.approx(m[k]), k
    assert m["victory"] == pytest.approx(1 / m["culprit_rank"])
    assert m["civilians_win"] == (m["culprit_rank"] == 1)
    assert ep.winning_faction == ("civilian" if m["civilians_win"] else "culprit")
    assert m["cic"] == pytest.approx(m["clues_revealed"] / load_script("lighthouse").total_clues)
    assert m["overall"] == pytest.approx(sum(m[k] for k in ("victory", "tii", "cic", "ici", "sci")) / 5)
    assert ep.winning_faction in ("culprit", "civilian") and ep.metrics["accused"] == ep.metrics["ranking"][0]
    phases = [t.phase for t in ep.turns]
    last_intro = max(i for i, p in enumerate(phases) if p == "introduction")
    assert set(phases[:last_intro + 1]) == {"introduction"} and last_intro >= 3
    assert set(phases[last_intro + 1:phases.index("vote")]) <= {"ask", "answer", "investigate", "converse"}
    assert set(phases[phases.index("vote"):]) == {"vote"}
    assert sum(p == "vote" for p in phases) >= 4  # every character votes (a failed vote is re-asked)
    # every act is a training sample: faction, prompt messages and the sampled tokens with their log-probs
    for t in ep.turns:
        assert t.faction in ("culprit", "civilian") and t.messages[0]["role"] == "system"
        assert t.prompt_token_ids and t.completion_token_ids and len(t.logprobs) == len(t.completion_token_ids)
        assert t.adapter == "base"
    assert ep.metrics["judge_calls"] >= 3 * 4
    assert "Verdict" in md.read_text()


def test_summaries_by_the_served_model_fit_the_budget_and_are_cached(vllm_server, model_path, monkeypatch, tmp_path):
    """The summaries the real model writes stay within each field's token share of the model's own tokenizer
    (max_tokens = the share), the context is the one the server grants, and a second preparation is read from the
    cache without any request."""
    import asyncio
    import dataclasses

    from stratagem.games.mystery.game import SUMMARY_SHARES, MysteryConfig
    from stratagem.games.mystery.rollout import script_summaries
    from stratagem.games.mystery.summary import context_length, endpoint_context, hf_token_counter, prepare_summaries

    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path / "cache"))
    granted = asyncio.run(endpoint_context(vllm_server.base_url, "base"))
    assert isinstance(granted, int) and 0 < granted <= context_length(model_path)
    full = load_script("lighthouse")
    s = dataclasses.replace(full, characters=full.characters[:1])  # one character: a few short model calls
    budget = 60  # shares of 6-21 tokens, at least 16 each
    out = asyncio.run(script_summaries(s, MysteryConfig(summary_tokens=budget), vllm_server.base_url, "base"))
    count = hf_token_counter(model_path)
    assert set(out) == set(s.characters)
    for name, (summary,) in out.items():
        for line in summary.split("\n"):
            field, _, text = line.partition(": ")
            if field in SUMMARY_SHARES:
                assert count(text) <= max(16, int(budget * SUMMARY_SHARES[field])), (name, field, text)

    async def never(obs, max_tokens):
        raise AssertionError("the cached summaries were asked for again")

    key = f"base@{Path(model_path).name}"
    assert asyncio.run(prepare_summaries(s, never, key, budget, count, granted)) == out


def test_play_one_mirage_game(vllm_server):
    """The mirage protocol through the real server: THOUGHT / RESPONSE replies (structured: a bounded thought before
    the move), two judge requests per statement by the speaker's side, five grades and six reconstructions per
    character by the evaluation model, per-part ROUGE. Budgets lowered to the test server's 4,096-token context."""
    import asyncio

    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.rollout import collect_mystery_episodes

    cfg = MysteryConfig.mirage(rounds=1, full_script_tokens=1500, history_tokens=800, summary_tokens=None,
                               player_max_tokens=96, judge_max_tokens=64)
    [ep] = asyncio.run(collect_mystery_episodes("lighthouse", 1, base_url=vllm_server.base_url, config=cfg))
    m, s = ep.metrics, load_script("lighthouse")
    assert m["protocol"] == "mirage" and ep.params["order"] == s.characters  # the file's order
    statements = [t for t in ep.turns if t.illegal_reason is None and
                  t.phase in ("introduction", "ask", "investigate", "answer")]
    assert m["judge_calls"] == 2 * len(statements) + 11 * len(s.characters)
    assert all("said" in t.info for t in ep.turns)
    for c in s.characters:
        assert set(m["characters"][c]["rouge_parts"]) == {"Story", "Script", "Relationship", "Performance",
                                                          "Purpose", "Ability"}
        assert 0 <= m["characters"][c]["rouge_l"] <= 1
    assert "RESPONSE" in ep.turns[0].messages[1]["content"] and 0 <= m["failed_action_rate"] <= 1
