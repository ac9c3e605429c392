"""Parsers, history summary, metric formulas (worked examples) and the human seat through a LangGraph interrupt."""

from __future__ import annotations

import re

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from mystery_helpers import ScriptedJudge, ScriptedPlayers

from stratagem.games.core import Episode
from stratagem.games.mystery import metrics as M
from stratagem.games.mystery.game import MysteryConfig, MysteryGame, parse_converse, parse_vote, summarise_history
from stratagem.games.mystery.graph import app, build_graph, recursion_limit
from stratagem.games.mystery.judge import parse_scores
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.rollout import play_episode

CHARS = ["Nora Vance", "Owen Hale", "Bram Keel", "Iris Marr"]
LOCS = ["Lamp Room", "Boathouse"]


@pytest.mark.parametrize("text,expected", [
    ("Ask Owen Hale: where were you?", {"kind": "ask", "target": "Owen Hale", "question": "where were you?"}),
    ("I will ask iris - did you hear steps?", {"kind": "ask", "target": "Iris Marr", "question": "did you hear steps?"}),
    ("【Investigate】【the lamp room】", {"kind": "investigate", "location": "Lamp Room"}),
    ("**Investigate** Boathouse.", {"kind": "investigate", "location": "Boathouse"}),
])
def test_parse_converse_valid(text, expected):
    assert parse_converse(text, "Nora Vance", CHARS, LOCS) == (expected, None)


@pytest.mark.parametrize("text,reason", [
    ("Hello everyone", "no action"),
    ("Ask Elias: why?", "Ask needs a character"),
    ("Ask Nora Vance: who am I?", "cannot ask themselves"),
    ("Ask Owen Hale", "Ask without a question"),
    ("Investigate the cellar", "Investigate needs a place with clues"),
])
def test_parse_converse_failures(text, reason):
    action, why = parse_converse(text, "Nora Vance", CHARS, LOCS)
    assert action is None and reason in why


def test_parse_vote():
    assert parse_vote("I think Bram did it, not Iris", "Nora Vance", CHARS) == ("Bram Keel", None)
    assert parse_vote("Nora Vance, no wait, Owen", "Nora Vance", CHARS) == ("Owen Hale", None)
    assert parse_vote("nobody", "Nora Vance", CHARS)[0] is None


@pytest.mark.parametrize("text,values,ok", [
    ('{"suspicion": 2, "trust": 1}', {"suspicion": 2, "trust": 1}, True),
    ("Suspicion: 1\nTrust: 0", {"suspicion": 1, "trust": 0}, True),
    ("2, 2", {"suspicion": 2, "trust": 2}, True),
    ("suspicion 7", {"suspicion": 2, "trust": 0}, False),  # clamped; trust missing -> default 0
    ("I cannot tell.", {"suspicion": 0, "trust": 0}, False),
])
def test_parse_scores(text, values, ok):
    p = parse_scores(text, ("suspicion", "trust"), 0, 2)
    assert p.values == values and p.ok is ok


class TemplateCopyingJudge:
    """Answers as the default model judging greedily did: a JSON object shown in the request is copied verbatim;
    without one it gives its own scores (suspicion 2, trust 1; ICI 10, 12, 14, 16; role-play 8)."""

    name = "copying-judge"
    OWN = {"judge_utterance": '{"suspicion": 2, "trust": 1}', "judge_roleplay": '{"roleplay": 8}',
           "judge_ici": '{"reasoning": 10, "communication": 12, "detail": 14, "creativity": 16}'}

    async def act(self, obs):
        from stratagem.games.core import Reply

        shown = re.search(r"\{[^{}]*\}", obs.messages[-1]["content"])
        return Reply(text=shown.group(0) if shown else self.OWN.get(obs.phase, "a reconstruction"))


async def test_judge_prompts_show_no_score_to_copy():
    """ICI was 0.0 in every real game: the judge prompts ended with a JSON template filled with zeros, which the
    greedy judge copied. Now no score value is shown, so the judge's own scores reach the metrics:
    ICI = (10 + 12 + 14 + 16) / 80 = 0.65 for every character; TII = 2 / (2 + 1) per speaker."""
    replies = {n: ["Hello, I was in the lamp room.", "Iris Marr" if n == "Owen Hale" else "Owen Hale"]
               for n in CHARS}  # introduce, vote
    ep = await play_episode("lighthouse", ScriptedPlayers(replies), TemplateCopyingJudge(),
                            MysteryConfig(rounds=0, shuffle_order=False))
    m = ep.metrics
    assert m["judge_parse_failures"] == 0
    assert m["ici"] == pytest.approx(0.65)
    assert m["tii"] == pytest.approx(2 / 3)
    assert all(c["roleplay"] == 8 for c in m["characters"].values())


def test_summarise_history_budget():
    entries = ["a b c d e f", "g h i j k l", "m n o"]
    assert summarise_history(entries, 20, 2) == "a b c d e f\ng h i j k l\nm n o"
    # 9 words: the newest two fit whole (3 + 6), the oldest is cut to 2 words + "..." -> does not fit -> counted
    assert summarise_history(entries, 9, 2) == "(1 earlier entries omitted)\ng h i j k l\nm n o"
    assert summarise_history(entries, 12, 2) == "a b ...\ng h i j k l\nm n o"
    assert summarise_history([], 10, 2) == "(nothing yet)"


def test_prompt_history_is_summarised_past_the_budget():
    game = MysteryGame.new(load_script("lighthouse"), 0, MysteryConfig(history_words=13, history_entry_words=2))
    game.state.public += [f"entry {i} " + "word " * 8 for i in range(5)]  # 10 words each, after the case line
    user = game.observation().messages[1]["content"]
    # newest entry whole (10 words), the one before cut to 2 words + '...' (3), the case line and 3 more counted
    assert "(4 earlier entries omitted)\nentry 3 ...\nentry 4 word" in user
    assert "entry 2" not in user


def test_rouge_l_worked_example():
    # ref: the cat sat on the mat (6), cand: the cat lay on the mat today (7); LCS = the cat on the mat = 5
    p, r = 5 / 7, 5 / 6
    assert M.rouge_l("The cat sat on the mat.", "the cat lay on the mat today") == pytest.approx(2 * p * r / (p + r))
    assert M.rouge_l("abc", "") == 0.0 and M.rouge_l("x y", "x y") == 1.0


def test_metric_formulas_worked_example():
    order = ["A", "B", "C"]
    utt = [("A", 2, 0), ("A", 1, 1), ("B", 0, 2), ("C", 1, 0)]
    votes = {"A": "B", "B": "C", "C": "B"}
    d = M.doubt_scores(order, utt, votes, vote_weight=2)
    assert d == {"A": 2.0, "B": -2 + 4.0, "C": 1 + 2.0}
    rank = M.ranking(order, d, votes)
    assert rank == ["C", "B", "A"]  # C 3; A and B tie at 2, B received more votes
    assert M.victory(["B", "C", "A"], ["A"]) == pytest.approx(1 / 3)
    assert M.victory(["B", "C", "A"], ["A", "C"]) == 0.5
    assert M.tii(order, utt) == pytest.approx((3 / 4 + 0 / 2 + 1 / 1) / 3)
    assert M.cic(3, 12) == 0.25
    assert M.ici({"A": dict(reasoning=20, communication=10, detail=10, creativity=0),
                  "B": dict(reasoning=0, communication=0, detail=0, creativity=0)}) == pytest.approx(0.25)
    assert M.sci({"A": 10, "B": 20}, {"A": 0.5, "B": 0.0}) == pytest.approx(((0.25 + 0.25) + (0.5 + 0)) / 2)
    assert M.overall(dict(victory=1, tii=0.5, cic=0.25, ici=0.25, sci=0.5)) == pytest.approx(0.5)
    agg = M.aggregate([{"victory": 1.0, "civilians_win": True, "accused": "A"},
                       {"victory": 0.5, "civilians_win": False, "accused": "B"}])
    assert agg == {"games": 2, "victory": 0.75, "civilians_win": 0.5}


async def test_human_seat_through_interrupt():
    iris = "Iris Marr"
    bots = ScriptedPlayers({"Nora Vance": ["Hi.", "Investigate Lamp Room", "Iris Marr"],
                            "Owen Hale": ["Hi.", "Ask Iris: what did you hear?", "Nora"],
                            "Bram Keel": ["Hi.", "Investigate Boathouse", "Nora"]})
    cfg = MysteryConfig(rounds=1, shuffle_order=False, human_seats=[iris])
    graph = build_graph(bots, ScriptedJudge({}, {}, {}, {}), cfg, checkpointer=InMemorySaver())
    run = {"configurable": {"thread_id": "human-1"}, "recursion_limit": recursion_limit("lighthouse", cfg)}
    out = await graph.ainvoke({"script": "lighthouse", "seed": 3}, run)
    human_replies = ["I am Iris, the niece.", "Footsteps at 11:50.", "Investigate Cellar", "Investigate Lamp Room",
                     "Nora Vance"]
    asked = []
    while "__interrupt__" in out:
        payload = out["__interrupt__"][0].value
        assert payload["character"] == iris
        asked.append(payload["phase"])
        out = await graph.ainvoke(Command(resume=human_replies[len(asked) - 1]), run)
    assert asked == ["introduction", "answer", "converse", "converse", "vote"]
    ep = Episode.from_dict(out["episode"])
    mine = [t for t in ep.turns if t.role == iris]
    assert [t.adapter for t in mine] == ["human"] * 5 and [t.legal for t in mine] == [True, True, False, True, True]
    assert ep.seats[3].agent == "human" and ep.metrics["votes"][iris] == "Nora Vance"
    assert mine[3].info["clue"].startswith("A note in Elias")  # Nora took the first Lamp Room clue


def test_app_is_compiled_without_checkpointer():
    assert app.checkpointer is None
    assert {"setup", "introduction", "converse", "answer", "vote", "judge"} <= set(app.get_graph().nodes)
