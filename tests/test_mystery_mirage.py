"""MIRAGE's published layout as it is: both languages' file names, Truth.json beside the scripts, the shipped
culprit table, keyword memories, stage-2 renames, a prologue, empty abilities, the two-detective script voting among
its candidates; structured-output schemas and the lenient JSON move parser; model summaries within a token budget.

Small fixtures with MIRAGE's real folder names are built here; the tests that load the real benchmark run only
when $STRATAGEM_MIRAGE_DIR names a MIRAGE `dataset/<language>` folder."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from mirage_scripts import _dump, _fields
from typer.testing import CliRunner

from stratagem.cli import app
from stratagem.games.core import Observation, Reply
from stratagem.games.mystery.game import CONVERSE, VOTE, MysteryConfig, MysteryGame, json_move, parse_converse
from stratagem.games.mystery.schema import culprit_table, load_script_dir, stage_number, validate_script_dir
from stratagem.games.mystery.structured import schema_for
from stratagem.games.mystery.summary import ContextBudgetError, Summariser, check_budget, prepare_summaries

runner = CliRunner()
MIRAGE_DIR = os.environ.get("STRATAGEM_MIRAGE_DIR")


def test_stage_numbers_in_both_languages():
    assert [stage_number(k) for k in ("Stage 1", "Stage 12", "第一幕", "第七幕", "第十幕", "第十二幕", "show")] == \
        [1, 12, 1, 7, 10, 12, None]


def test_culprit_table_ships_all_sixteen_scripts():
    t = culprit_table()
    assert len(t["En"]) == 8 and len(t["Zh"]) == 8
    assert t["En"]["Fox Hotel"]["culprits"] == ["Nopperabo"]
    assert t["En"]["The Final Performance of a Big Star"]["culprits"][0] in \
        t["En"]["The Final Performance of a Big Star"]["candidates"]


def test_english_mirage_folder_validates_and_loads(en):
    r = runner.invoke(app, ["mystery", "validate", str(en)])
    assert r.exit_code == 0, r.output
    assert r.output.count("ok:") == 3 and "truth from En MIRAGE data" in r.output
    bride = load_script_dir(en / "Bride in Filial Dress")
    assert bride.culprits == ["Doctor Fang"] and bride.truth == "The doctor did it." and bride.source == "mirage"
    assert bride.memories == {"Junmeng Chen": {"veil": "You sewed that veil."}}
    assert list(bride.stages[0].clues) == ["Woods"]  # the memory map is no searchable place
    assert bride.stages[0].characters["Ling Yun"]["Ability"] == ""
    fox = load_script_dir(en / "Fox Hotel")
    assert fox.characters == ["Nopperabo", "Little Fox", "Sky Dog"]
    assert fox.stages[1].names["Nopperabo"] == "Ichiro Kiryu (Nopperabo)"
    assert fox.field_text("Nopperabo", "Script") == "Tonight's show begins.\nNopperabo script.\nYou are Ichiro."
    assert fox.notes == {"Little Fox": "Your secret."}
    assert fox.shown_name("Little Fox", 0) == "Little Fox" and fox.shown_name("Little Fox", 1) == "Xiao Nuan (Little Fox)"
    star = load_script_dir(en / "The Final Performance of a Big Star")
    assert star.characters == ["Weiwen Han", "Manli Shen"] and star.culprits == ["Richard"]
    assert star.suspects[1] == "Richard" and len(star.suspects) == 7
    assert star.stages[0].public == ["P1.", "P2."] and star.stages[3].public == ["P3."]
    assert list(star.stages[0].clues) == ["Richard"]


def test_chinese_mirage_folder_validates(zh):
    r = runner.invoke(app, ["mystery", "validate", str(zh / "狐狸旅馆")])
    assert r.exit_code == 0, r.output
    s = load_script_dir(zh / "狐狸旅馆")
    assert s.language == "Zh" and s.culprits == ["滑头鬼"] and s.truth == "滑头鬼是凶手。"
    assert s.stages[1].names == {"滑头鬼": "桐生一郎（滑头鬼）", "小狐狸": "小暖（小狐狸）"}
    assert s.notes == {"小狐狸": "秘密。"} and s.field_text("滑头鬼", "Script").startswith("序幕。")
    g = MysteryGame.new(s, 0, MysteryConfig(rounds=1, shuffle_order=False))
    g.state.phase, g.state.cursor = CONVERSE, 0
    parsed, reason = parse_converse("询问小狐狸：你在哪里？", "滑头鬼", g.state.order, g.locations())
    assert reason is None and parsed["target"] == "小狐狸" and parsed["question"] == "你在哪里？"


def test_missing_truth_and_unknown_mirage_script_are_named(en, tmp_path):
    (en / "Truth.json").unlink()
    errs = [str(e) for e in validate_script_dir(en / "Fox Hotel")]
    assert any(e.startswith("Truth.json: <root>: expected the file to exist in") for e in errs)
    other = tmp_path / "x" / "My Own Script"
    other.mkdir(parents=True)
    _dump(other / "script.json", {n: _fields(n) for n in ("A a", "B b", "C c")})
    _dump(other / "clues.json", {"Hall": ["x"]})
    errs = [str(e) for e in validate_script_dir(other)]
    assert any(e.startswith("meta.json: <root>: expected the file to exist") and "culprit table" in e for e in errs)


class Scripted:
    name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)

    async def act(self, obs):
        return Reply(text=self.replies.pop(0))


def _play(game: MysteryGame, replies: list[str]):
    for text in replies:
        obs = game.observation(game.retry_reason())
        game.apply(obs, Reply(text=text))


def test_keyword_memory_comes_back_to_its_owner(en):
    s = load_script_dir(en / "Bride in Filial Dress")
    g = MysteryGame.new(s, 0, MysteryConfig(rounds=1, shuffle_order=False))
    _play(g, ["I am Ling.", "I am the doctor."])
    assert g.state.memories["Junmeng Chen"] == []
    obs = g.observation()  # Junmeng Chen introduces: nothing recalled yet
    assert "You remember" not in obs.messages[0]["content"]
    _play(g, ["I am Junmeng.", "Ask Doctor Fang: who tore the veil?"])
    assert g.state.memories["Junmeng Chen"] == ["veil"]
    g.state.question, g.state.phase = None, CONVERSE
    g.state.cursor = 2
    assert "You remember (veil): You sewed that veil." in g.observation().messages[0]["content"]
    assert "You sewed" not in MysteryGame(s, g.state, g.config).observation().messages[1]["content"]


def test_stage_two_names_in_prompts_and_parsing(en):
    s = load_script_dir(en / "Fox Hotel")
    g = MysteryGame.new(s, 0, MysteryConfig(rounds=1, shuffle_order=False))
    _play(g, ["Hi.", "Hi.", "Hi.", "Investigate Card Hall", "Investigate nowhere", "x", "x", "x"])
    assert g.state.stage == 1 and g.state.phase == CONVERSE
    obs = g.observation()
    assert obs.messages[0]["content"].startswith("You are Ichiro Kiryu (Nopperabo)")
    assert "Ask Xiao Nuan (Little Fox): QUESTION" in obs.legal_actions
    for text in ("Ask Xiao Nuan: where were you?", "Ask Little Fox: where were you?",
                 '{"move": "Ask Xiao Nuan (Little Fox)", "question": "where were you?"}'):
        parsed, reason = parse_converse(text, "Nopperabo", g.state.order, g.locations(), g.aliases())
        assert reason is None and parsed["target"] == "Little Fox", text


def test_two_detectives_vote_among_candidates_and_hear_public_clues(en):
    s = load_script_dir(en / "The Final Performance of a Big Star")
    g = MysteryGame.new(s, 0, MysteryConfig(rounds=0, shuffle_order=False))
    _play(g, ["I am Weiwen.", "I am Manli."])
    assert "[Public clue] P1." in g.state.public and "[Public clue] P3." in g.state.public
    assert g.state.phase == VOTE
    obs = g.observation()
    assert obs.legal_actions == s.candidates and "Richard" in obs.messages[1]["content"]
    _play(g, ["Richard did it", '{"vote": "Di Huang"}'])
    assert g.state.votes == {"Weiwen Han": "Richard", "Manli Shen": "Di Huang"}


def test_json_moves_and_schemas():
    assert json_move('{"action": "Ask", "target": "Ann Lee", "content": "why?"}') == "Ask Ann Lee: why?"
    assert json_move('{\n "action"\n:\n"Investigate",\n"target":"Attic","content":"x"}') == "Investigate Attic"
    assert json_move('{"action": "Ask", "target": "Ann Lee", "content": "where were yo') == "Ask Ann Lee: where were yo"
    assert json_move("Ask Ann Lee: why?") is None
    obs = Observation(game="mystery", seat=0, role="Ben", phase="converse", messages=[],
                      legal_actions=["Ask Ann Lee: QUESTION", "Investigate Attic"])
    sch = schema_for(obs)
    assert sch["properties"]["move"]["enum"] == ["Ask Ann Lee", "Investigate Attic"]  # no incoherent pair possible
    assert list(sch["required"]) == ["move", "question"]
    assert json_move('{"move": "Ask Ann Lee", "question": "why?"}') == "Ask Ann Lee: why?"
    assert json_move('{"move": "Investigate Attic", "question": "look"}') == "Investigate Attic"
    vote = Observation(game="mystery", seat=0, role="Ben", phase="vote", messages=[], legal_actions=["Ann Lee"])
    assert schema_for(vote)["properties"]["vote"]["enum"] == ["Ann Lee"]
    judge = Observation(game="mystery", seat=-1, role="judge", phase="judge_utterance", messages=[], legal_actions=[])
    assert schema_for(judge)["properties"]["trust"] == {"type": "integer", "minimum": 0, "maximum": 2}
    intro = Observation(game="mystery", seat=0, role="Ben", phase="introduction", messages=[], legal_actions=[])
    assert schema_for(intro) is None


def test_structured_agent_falls_back_once_the_endpoint_rejects_the_field(monkeypatch):
    import httpx
    import openai

    from stratagem.agents.llm import LLMAgent
    from stratagem.games.mystery.structured import StructuredLLMAgent

    sent = []

    async def fake_act(self, obs):
        kw = self.request(obs)
        sent.append("structured_outputs" in kw["extra_body"])
        if sent[-1]:
            raise openai.BadRequestError("unknown field structured_outputs", response=httpx.Response(
                400, request=httpx.Request("POST", "http://x")), body=None)
        return Reply(text="ok")

    monkeypatch.setattr(LLMAgent, "act", fake_act)
    agent = StructuredLLMAgent(base_url="http://127.0.0.1:9/v1")
    vote = Observation(game="mystery", seat=0, role="Ben", phase="vote", messages=[], legal_actions=["Ann Lee"])
    assert asyncio.run(agent.act(vote)).text == "ok" and asyncio.run(agent.act(vote)).text == "ok"
    assert sent == [True, False, False] and agent.structured is False


def test_summaries_fit_the_token_budget_and_are_cached(en, monkeypatch, tmp_path):
    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path / "cache"))
    s = load_script_dir(en / "Fox Hotel")
    s.stages[0].characters["Sky Dog"]["Script"] = " ".join(f"w{i}" for i in range(400))
    count = lambda t: len(t.split())  # noqa: E731  one token a word
    asked = []

    async def ask(obs, max_tokens):
        asked.append((len(obs.messages[1]["content"].split()), max_tokens))
        return " ".join(["s"] * (max_tokens + 5))[: 2 * max_tokens - 1]  # the model obeys max_tokens

    out = asyncio.run(prepare_summaries(s, ask, "base", 100, count, context=300))
    # budget 100, two stages: stage 1 gets 70; Script's share 0.35 -> 24 tokens; 400 words > room 300-96-24 = 180:
    # cut into ceil(400*5/(180*4)) = 3 chunks, each summarised to 24, then the 72 joined words once more
    assert [m for _, m in asked] == [24, 24, 24, 24]
    assert all(n <= 300 - 24 for n, _ in asked)
    assert set(out) == set(s.characters) and len(out["Sky Dog"]) == 2
    assert out["Sky Dog"][1].startswith(out["Sky Dog"][0]) and "New in stage 2: You are Zetong." in out["Sky Dog"][1]
    assert out["Nopperabo"][0].startswith("Ability: You may lie.\nPurpose: Nopperabo purpose.")  # rules first
    asked.clear()
    assert asyncio.run(prepare_summaries(s, ask, "base", 100, count, context=300)) == out and asked == []
    g = MysteryGame.new(s, 0, MysteryConfig(shuffle_order=False), out)
    assert out["Nopperabo"][0] in g.observation().messages[0]["content"]


def test_context_budget_errors_name_the_budget():
    check_budget(1500, MysteryConfig(), 8192)
    # 8000 + 100 words x 2 + 400 + 64 = 8664 > 8192: at most 8192 - 200 - 400 - 64 = 7528
    with pytest.raises(ContextBudgetError, match="8664 tokens .* lower summary_tokens to at most 7528"):
        check_budget(8000, MysteryConfig(player_max_tokens=64, history_words=100), 8192)
    with pytest.raises(ContextBudgetError, match="lower summary_tokens"):
        asyncio.run(Summariser(None, lambda t: len(t.split()), 100).summarise("A", "Script", "w " * 500, 50))


def test_the_context_is_the_one_the_server_grants():
    """vLLM may serve a model with --max-model-len below its own context (the default server: 4096 of SmolLM2's
    8192); the summaries and the budget check use what /v1/models reports for the served name."""
    from stratagem.games.mystery.summary import served_context

    reply = {"data": [{"id": "base", "max_model_len": 4096}, {"id": "iter-1", "max_model_len": 2048},
                      {"id": "other"}]}
    assert served_context(reply, "base") == 4096 and served_context(reply, "iter-1") == 2048
    assert served_context(reply, "other") is None and served_context({}, "base") is None
    # 1500 + 220 words x 2 + 400 + 64 = 2404 fits 4096; a 3500-token summary does not (at most 3192)
    check_budget(1500, MysteryConfig(), 4096)
    with pytest.raises(ContextBudgetError, match="lower summary_tokens to at most 3192"):
        check_budget(3500, MysteryConfig(), 4096)


@pytest.mark.skipif(not MIRAGE_DIR, reason="set STRATAGEM_MIRAGE_DIR to a MIRAGE dataset/<language> folder")
def test_the_real_benchmark_validates():
    root = Path(MIRAGE_DIR)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 8
    r = runner.invoke(app, ["mystery", "validate", str(root)])
    assert r.exit_code == 0 and sum(line.startswith("ok: ") for line in r.output.splitlines()) == 8, r.output
    for f in folders:
        s = load_script_dir(f)
        assert s.truth and s.culprits and all(c in s.suspects for c in s.culprits)
