"""A full murder-mystery game with scripted players and a scripted judge, checked against hand-computed values."""

from __future__ import annotations

import pytest
from mystery_helpers import ScriptedJudge, ScriptedPlayers

from stratagem.games.core import Episode
from stratagem.games.mystery.game import MysteryConfig
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.rollout import play_episode

NORA, OWEN, BRAM, IRIS = "Nora Vance", "Owen Hale", "Bram Keel", "Iris Marr"

# Speaking order (no shuffle) Nora, Owen, Bram, Iris; 2 rounds; max_reasks 1.
REPLIES = {
    NORA: ["I am Nora.", "Investigate Lamp Room", "In bed.", "**Ask** Bram Keel: why did you argue?", "", "",
           "Bram Keel"],
    OWEN: ["I am Owen.", "Ask Nora: Where were you at midnight?", "Investigate Lamp Room", "Nora"],
    BRAM: ["", "I am Bram.", "I think it rained", "dance", "He owed me money.", "Investigate lamp room",
           "I vote for Nora Vance"],
    IRIS: ["I am Iris.", "Investigate the boathouse", "Investigate Lamp Room",
           "Ask Nora Vance: why is your button missing?", "xyz", "Nora Vance"],
}

EXPECTED_TURNS = [  # (character, phase, legal)
    (NORA, "introduction", True), (OWEN, "introduction", True), (BRAM, "introduction", False),
    (BRAM, "introduction", True), (IRIS, "introduction", True),
    # round 1
    (NORA, "investigate", True), (OWEN, "ask", True), (NORA, "answer", True),
    (BRAM, "converse", False), (BRAM, "converse", False), (IRIS, "investigate", True),
    # round 2
    (NORA, "ask", True), (BRAM, "answer", True), (OWEN, "investigate", True), (BRAM, "investigate", True),
    (IRIS, "converse", False), (IRIS, "ask", True), (NORA, "answer", False), (NORA, "answer", False),
    # votes
    (NORA, "vote", True), (OWEN, "vote", True), (BRAM, "vote", True), (IRIS, "vote", False), (IRIS, "vote", True),
]


def make_judge() -> ScriptedJudge:
    script = load_script("lighthouse")
    return ScriptedJudge(
        utterance={NORA: '{"suspicion": 2, "trust": 0}', OWEN: "suspicion: 0, trust: 2", BRAM: "1 1",
                   IRIS: "garbage"},
        ici={NORA: '{"reasoning": 10, "communication": 10, "detail": 10, "creativity": 10}',
             OWEN: "reasoning 20 communication 20 detail 20 creativity 20", BRAM: "8 8 8 8", IRIS: "no idea"},
        roleplay={NORA: '{"roleplay": 20}', OWEN: "roleplay: 10", BRAM: "25", IRIS: ""},
        reconstruct={NORA: script.field_text(NORA, "Script"), OWEN: "", BRAM: "zebra", IRIS: ""},
    )


@pytest.fixture(scope="module")
async def played():
    players, judge = ScriptedPlayers(REPLIES), make_judge()
    ep = await play_episode("lighthouse", players, judge, MysteryConfig(rounds=2, shuffle_order=False, max_reasks=1))
    return ep, players, judge


async def test_phase_order_and_failed_actions(played):
    ep, players, _ = played
    assert [(t.role, t.phase, t.legal) for t in ep.turns] == EXPECTED_TURNS
    assert all(not q for q in players.replies.values())  # every scripted reply used, no extra re-ask
    failed = [t for t in ep.turns if not t.legal]
    assert all(t.reward == -1.0 for t in failed)
    # the outcome (civilians win, +-1) is added to each seat's last turn (the votes); other legal acts get 0
    assert [t.reward for t in ep.turns[-5:]] == [-1.0, 1.0, 1.0, -1.0, 1.0]  # Iris: failed vote, then her vote
    assert all(t.reward == 0.0 for t in ep.turns[:-5] if t.legal)
    # returns are the per-seat sums: Nora 2 failures - 1, Owen + 1, Bram 3 failures + 1, Iris 2 failures + 1
    assert ep.returns == [-3.0, 1.0, -2.0, -1.0]
    assert [t.info.get("passed", False) for t in failed] == [False, False, True, False, False, True, False]
    # the re-ask tells the character why
    retry = next(o for o in players.seen if o.role == BRAM and o.phase == "introduction" and "not accepted" in
                 o.messages[-1]["content"])
    assert "empty reply" in retry.messages[-1]["content"]
    assert ep.metrics["failed_actions"] == 7 and ep.metrics["acts"] == 24


async def test_turn_records(played):
    ep, _, _ = played
    ask = ep.turns[6]
    assert ask.action == "Ask Nora Vance: Where were you at midnight?" and ask.info["target"] == NORA
    assert ask.seat == 1 and ask.faction == "civilian" and ep.turns[0].faction == "culprit"
    assert ask.prompt_token_ids == [1, 2, 3] and ask.completion_token_ids == [4, 5] and ask.logprobs == [-0.1, -0.2]
    assert ask.adapter == "scripted-model"
    assert ask.messages[0]["role"] == "system" and "Owen Hale" in ask.messages[0]["content"]
    # the culprit's prompt tells them they may lie; a civilian's that they may not
    assert "may lie about anything" in ep.turns[0].messages[0]["content"]
    assert "must always tell the truth" in ask.messages[0]["content"]
    assert Episode.from_json(ep.to_json()) == ep


async def test_clue_removal(played):
    ep, players, _ = played
    clues = load_script("lighthouse").stages[0].clues
    inv = [t for t in ep.turns if t.phase == "investigate"]
    assert [(t.role, t.info["location"], t.info["clue"]) for t in inv] == [
        (NORA, "Lamp Room", clues["Lamp Room"][0]), (IRIS, "Boathouse", clues["Boathouse"][0]),
        (OWEN, "Lamp Room", clues["Lamp Room"][1]), (BRAM, "Lamp Room", clues["Lamp Room"][2])]
    # the emptied Lamp Room disappeared: Iris's try failed and her next prompt no longer lists it
    assert "Lamp Room" in ep.turns[15].illegal_reason
    iris_retry = [o for o in players.seen if o.role == IRIS and o.phase == "converse"][-1]
    assert "Investigate Lamp Room" not in iris_retry.legal_actions
    assert "Investigate Boathouse" in iris_retry.legal_actions
    assert ep.params["revealed"][1]["by"] == IRIS and ep.metrics["clues_revealed"] == 4


async def test_doubt_ranking_winner(played):
    ep, _, judge = played
    m = ep.metrics
    # utterances: Nora 3 (intro, answer, ask) x (2, 0); Owen 2 x (0, 2); Bram 2 x (1, 1); Iris 2 unparsed (0, 0)
    # votes (N = 4 characters): Nora 3 (Owen, Bram, Iris), Bram 1 (Nora)
    assert m["doubt"] == {NORA: 6 - 0 + 4 * 3, OWEN: 0 - 4, BRAM: 2 - 2 + 4 * 1, IRIS: 0}
    assert m["ranking"] == [NORA, BRAM, IRIS, OWEN]
    assert m["accused"] == NORA and m["civilians_win"] is True
    assert ep.winning_faction == "civilian" and ep.winners == [1, 2, 3]
    assert m["judge_calls"] == 9 + 3 * 4 == len(judge.calls)
    assert m["judge_parse_failures"] == 4  # Iris's 2 utterances, her ICI and her role-play
    assert ep.turns[0].info["judge"] == {"suspicion": 2, "trust": 0, "ok": True, "raw": '{"suspicion": 2, "trust": 0}'}


async def test_metrics(played):
    ep, _, _ = played
    m = ep.metrics
    assert m["victory"] == 1.0
    assert m["tii"] == pytest.approx((6 / 6 + 0 / 4 + 2 / 4 + 0.5) / 4)  # 0.5
    assert m["cic"] == pytest.approx(4 / 12)
    assert m["ici"] == pytest.approx((40 / 80 + 80 / 80 + 32 / 80 + 0) / 4)  # 0.475
    # SCI: Nora 0.5*20/20 + 0.5*1 (exact reconstruction); Owen 0.5*10/20; Bram 0.5*20/20 (25 clamped); Iris 0
    assert m["characters"][NORA]["rouge_l"] == 1.0 and m["characters"][BRAM]["rouge_l"] == 0.0
    assert m["sci"] == pytest.approx((1.0 + 0.25 + 0.5 + 0.0) / 4)  # 0.4375
    assert m["overall"] == pytest.approx((1.0 + 0.5 + 1 / 3 + 0.475 + 0.4375) / 5)  # 0.549166...


async def test_culprit_escapes_when_votes_go_elsewhere():
    replies = {NORA: ["hi", "Owen Hale"], OWEN: ["hi", "Bram"], BRAM: ["hi", "Owen Hale"], IRIS: ["hi", "Owen"]}
    judge = ScriptedJudge({}, {}, {}, {})
    ep = await play_episode("lighthouse", ScriptedPlayers(replies), judge, MysteryConfig(rounds=0, shuffle_order=False))
    m = ep.metrics
    assert m["ranking"] == [OWEN, BRAM, NORA, IRIS]  # doubt 12, 4, 0, 0: Nora before Iris by speaking order
    assert m["victory"] == pytest.approx(1 / 3) and m["culprit_rank"] == 3
    assert ep.winning_faction == "culprit" and ep.returns == [1.0, -1.0, -1.0, -1.0]
    assert m["tii"] == 0.5 and m["ici"] == 0.0 and m["cic"] == 0.0


async def test_multi_stage_adds_text_and_clues():
    script = load_script("night_express")
    order = script.characters
    replies = {n: ["Hello."] for n in order}
    # stage 1: everyone investigates compartment 7 / corridor; stage 2: the new cabin
    stage1 = ["Investigate Compartment 7"] * 3 + ["Investigate Corridor"] * 2
    for n, a in zip(order, stage1):
        replies[n].append(a)
    stage2 = ["Investigate Conductor's Cabin"] * 3 + ["Investigate Staff Cabin", "Investigate Compartment 8"]
    for n, a in zip(order, stage2):
        replies[n] += [a, order[1] if n == order[0] else order[0]]
    players = ScriptedPlayers(replies)
    ep = await play_episode("night_express", players, ScriptedJudge({}, {}, {}, {}),
                            MysteryConfig(rounds=1, shuffle_order=False))
    inv = [t for t in ep.turns if t.phase == "investigate"]
    assert [t.info["stage"] for t in inv] == [0] * 5 + [1] * 5
    assert [t.info["location"] for t in inv][5:] == ["Conductor's Cabin"] * 3 + ["Staff Cabin", "Compartment 8"]
    stage2_obs = [o for o in players.seen if o.phase == "converse"][5]
    assert "New in this stage:" in stage2_obs.messages[0]["content"]
    assert "Investigate Conductor's Cabin" in stage2_obs.legal_actions
    assert "[Stage 2]" in stage2_obs.messages[1]["content"]
    stage1_obs = [o for o in players.seen if o.phase == "converse"][0]
    assert "New in this stage:" not in stage1_obs.messages[0]["content"]
    assert "Investigate Conductor's Cabin" not in stage1_obs.legal_actions
    assert ep.metrics["cic"] == pytest.approx(10 / 12)
    assert ep.metrics["civilians_win"] is True and ep.metrics["accused"] == "Milo Brandt"
