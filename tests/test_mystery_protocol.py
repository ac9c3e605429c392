"""The `mirage` protocol with scripted agents: who judges and what each judge sees, the players' context, MIRAGE's
per-script rules (Final Performance, Fox Hotel, multi-stage resets), the history summary, the prompt files."""

from __future__ import annotations

import asyncio
import re

import pytest

from stratagem.games.core import Observation, Reply
from stratagem.games.mystery.game import ANSWER, CONVERSE, INTRODUCTION, SELECT, VOTE, MysteryConfig, MysteryGame
from stratagem.games.mystery.mirage_judge import (
    JUDGE_ABILITY,
    JUDGE_PART,
    JUDGE_SUSPICION,
    JUDGE_TRUST,
    score,
    summary_part,
)
from stratagem.games.mystery.prompting import load_prompts, split_thought
from stratagem.games.mystery.rollout import play_episode
from stratagem.games.mystery.rules import rules_for
from stratagem.games.mystery.schema import load_script_dir

WORDS = lambda t: len(t.split())  # noqa: E731  a token counter for tests: no tokenizer needed


class Recorder:
    """A judge or evaluator that records every request and answers with a fixed score (or text)."""

    def __init__(self, name: str, score_text: str = "THOUGHT: fine.\nRESPONSE: 1"):
        self.name, self.score_text, self.calls = name, score_text, []

    async def act(self, obs: Observation) -> Reply:
        self.calls.append(obs)
        if obs.phase == JUDGE_PART:
            return Reply(text="THOUGHT: guess.\nRESPONSE: " + self.part_text(obs))
        return Reply(text=self.score_text)

    @staticmethod
    def part_text(obs: Observation) -> str:
        return re.search(r'part "(\w+)"', obs.messages[-1]["content"]).group(1).lower() + "."

    def by_phase(self, phase: str) -> list[Observation]:
        return [c for c in self.calls if c.phase == phase]


class Players:
    """Per phase a reply function of the observation; records what each character saw."""

    name = "scripted"

    def __init__(self, converse):
        self.converse, self.seen = converse, []

    async def act(self, obs: Observation) -> Reply:
        self.seen.append(obs)
        if obs.phase in (CONVERSE, SELECT):
            text = self.converse(obs)
        elif obs.phase == VOTE:
            text = f"THOUGHT: it is clear.\nRESPONSE: {obs.legal_actions[-1]}"
        else:
            text = f"THOUGHT: keep calm.\nRESPONSE: I am {obs.role} and I saw nothing ({obs.phase})."
        return Reply(text=text, model="scripted")


def ask_first(obs: Observation) -> str:
    target = obs.legal_actions[0].split(":")[0].replace("Ask ", "")
    return f"THOUGHT: {target} looks nervous.\nRESPONSE: [Ask][{target}]: where were you at nine?"


def play(script, players, judges, evaluator, cfg, seed=0, **kw):
    return asyncio.run(play_episode(script.path, players, judges, cfg, seed, evaluator=evaluator,
                                    count_tokens=kw.pop("count_tokens", WORDS), **kw))


def test_mirage_settings_are_mirages():
    cfg = MysteryConfig.mirage()
    assert (cfg.protocol, cfg.rounds, cfg.shuffle_order, cfg.player_temperature, cfg.summary_tokens,
            cfg.full_script_tokens, cfg.history_tokens) == ("mirage", 5, False, 0.8, 1500, 3000, 1500)
    assert MysteryConfig.mirage(rounds=1).rounds == 1
    with pytest.raises(ValueError, match="protocol"):
        MysteryConfig(protocol="other")


def test_split_thought_and_score_parsing():
    assert split_thought("THOUGHT: he lies.\nRESPONSE: [Ask][Ann]: why?") == ("he lies.", "[Ask][Ann]: why?")
    assert split_thought("Ask Ann: why?") == ("", "Ask Ann: why?")
    assert score("THOUGHT: a 5 in the thought.\nRESPONSE: 2", 2) == (2, True)
    assert score('{"thought": "x", "score": 17}', 20) == (17, True)
    assert score("RESPONSE: 9", 2) == (2, True)  # clamped
    assert score("no number", 2) == (0, False)
    assert summary_part("Story: a.\nb.\nScript: c.", "Story") == "a.\nb."


def test_judges_are_the_speakers_side_and_see_the_full_history(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    culprit_side, civilian_side, evaluator = Recorder("culprit"), Recorder("civilian"), Recorder("eval", "RESPONSE: 12")
    ep = play(bride, Players(ask_first), {"culprit": culprit_side, "civilian": civilian_side}, evaluator,
              MysteryConfig.mirage(rounds=1))
    turns = ep.turns
    judged = [t for t in turns if t.illegal_reason is None and t.phase in (INTRODUCTION, "ask", ANSWER)]
    by_culprit = [t for t in judged if t.role == "Doctor Fang"]
    # two requests (suspicion, trust) per statement, each asked of the speaker's side only
    assert len(culprit_side.calls) == 2 * len(by_culprit) and len(civilian_side.calls) == 2 * (len(judged) - len(by_culprit))
    assert {c.phase for c in culprit_side.calls} == {JUDGE_SUSPICION, JUDGE_TRUST}
    assert all("Doctor Fang now says" in c.messages[-1]["content"] for c in culprit_side.calls)
    # the full history as the speaker saw it: the last statement's request holds every earlier public entry whole
    last = civilian_side.calls[-1].messages[-1]["content"]
    first_intro = next(t for t in turns if t.phase == INTRODUCTION).info["said"]
    assert "[Case]" in last and first_intro in last
    # the evaluator: 5 ability grades and 6 part reconstructions per character; only the grades see the truth
    assert len(evaluator.by_phase(JUDGE_ABILITY)) == 5 * 3 and len(evaluator.by_phase(JUDGE_PART)) == 6 * 3
    assert all(bride.truth in c.messages[-1]["content"] for c in evaluator.by_phase(JUDGE_ABILITY))
    assert not any(bride.truth in c.messages[-1]["content"] for c in evaluator.by_phase(JUDGE_PART))
    m = ep.metrics
    assert m["protocol"] == "mirage" and m["ici"] == pytest.approx(12 * 4 / 80)
    assert m["characters"]["Ling Yun"]["roleplay"] == 12
    # every statement scored 1 / 1: doubt is votes only; the reconstruction 'story.' of "Ling Yun story." scores
    # 2 * (1/1 * 1/3) / (1 + 1/3) = 0.5 on Story and 0 elsewhere except Script ('script.' vs 'Ling Yun script.')
    parts = m["characters"]["Ling Yun"]["rouge_parts"]
    assert parts["Story"] == pytest.approx(0.5) and parts["Ability"] == 0.0


def test_players_context_whole_script_clues_last_action_thought_and_file_order(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    players = Players(ask_first)
    play(bride, players, Recorder("j"), Recorder("e"), MysteryConfig.mirage(rounds=2))
    intros = [o for o in players.seen if o.phase == INTRODUCTION]
    assert [o.role for o in intros] == bride.characters  # the file's speaking order
    sys_ = intros[0].messages[0]["content"]
    for f in ("Story", "Script", "Relationship", "Performance", "Purpose"):
        assert f"Ling Yun {f.lower()}." in sys_  # the whole sheet, every part
    user = intros[0].messages[1]["content"]
    assert "THOUGHT:" in user and "RESPONSE:" in user
    second = [o for o in players.seen if o.phase == CONVERSE and o.role == "Ling Yun"][1]
    assert "where were you at nine?" in second.messages[1]["content"].split("Your last thoughts")[1]
    assert "RESPONSE: [Ask]" in second.messages[1]["content"]  # their own last act, with its THOUGHT


def test_keyword_memory_is_a_personal_clue(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    players = Players(lambda o: "RESPONSE: [Ask][Ling Yun]: what about the veil?" if o.role != "Ling Yun"
                      else "RESPONSE: [Ask][Doctor Fang]: and you?")
    play(bride, players, Recorder("j"), Recorder("e"), MysteryConfig.mirage(rounds=1))
    late = [o for o in players.seen if o.role == "Junmeng Chen" and o.phase == VOTE][0]
    assert "veil: You sewed that veil." in late.messages[0]["content"].split("personal clues")[1]


def test_clue_choice_is_random_and_seeded(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    cfg = MysteryConfig.mirage(rounds=1)
    g = MysteryGame.new(bride, 3, cfg)
    g.state.clues = {"Woods": ["c0", "c1", "c2", "c3", "c4", "c5"]}
    picks = []
    for seed in range(6):
        g2 = MysteryGame.new(bride, seed, cfg)
        g2.state.clues = {"Woods": ["c0", "c1", "c2", "c3", "c4", "c5"]}
        g2.state.phase, g2.state.cursor = CONVERSE, 0
        obs = g2.observation()
        g2.apply(obs, Reply(text="RESPONSE: [Investigate][Woods]: I look under the leaves."))
        picks.append(g2.state.revealed[0]["clue"])
        assert g2.state.turns[-1]["info"]["speech"] == "I look under the leaves."
    assert len(set(picks)) > 1  # not file order
    g3 = MysteryGame.new(bride, 2, cfg)
    g3.state.clues = {"Woods": ["c0", "c1", "c2", "c3", "c4", "c5"]}
    g3.state.phase = CONVERSE
    g3.apply(g3.observation(), Reply(text="RESPONSE: [Investigate][Woods]: again"))
    assert g3.state.revealed[0]["clue"] == picks[2]  # same game seed, same draw


def test_investigation_speech_is_judged(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    judge = Recorder("j")
    players = Players(lambda o: "RESPONSE: [Investigate][Woods]: I search the woods for tracks.")
    ep = play(bride, players, judge, Recorder("e"), MysteryConfig.mirage(rounds=1))
    assert any(t.phase == "investigate" for t in ep.turns)
    assert any("I search the woods for tracks." in c.messages[-1]["content"] for c in judge.by_phase(JUDGE_SUSPICION))


def test_final_performance_rules(en):
    star = load_script_dir(en / "The Final Performance of a Big Star")
    assert rules_for(star.kind, "mirage").name == "MOC"
    civilian, evaluator = Recorder("civ"), Recorder("e")
    tries = {"n": 0}

    def converse(o):
        if o.phase == SELECT:
            return f"RESPONSE: [Investigate][{o.legal_actions[0].replace('Investigate ', '')}]: I look."
        tries["n"] += 1
        if tries["n"] == 1:  # investigating is no conversation move in this script
            return "RESPONSE: [Investigate][Richard]: look"
        return ask_first(o)

    players = Players(converse)
    ep = play(star, players, {"culprit": Recorder("cul"), "civilian": civilian}, evaluator,
              MysteryConfig.mirage(rounds=1))
    assert not any(o.phase == INTRODUCTION for o in players.seen)  # no introductions
    assert ep.turns[0].illegal_reason.startswith("this move is not allowed here")
    assert all(o.legal_actions and all(a.startswith("Ask") for a in o.legal_actions)
               for o in players.seen if o.phase == CONVERSE)
    forced = [t for t in ep.turns if t.info.get("forced")]
    assert forced and all(t.phase == "investigate" for t in forced)
    assert forced[0].info["stage"] == 0  # at the end of stage 1, before stage 2 starts
    # NPC judging: every candidate, two requests, after every completed act, by the players' side only
    game_acts = len(ep.params["revealed"]) + sum(1 for t in ep.turns if t.phase == ANSWER and t.illegal_reason is None)
    assert len(civilian.calls) == 2 * 7 * game_acts
    named = {next(g for g in re.search(r"how suspicious is (.+?)\?|how far can (.+?) be trusted",
                                        c.messages[-1]["content"]).groups() if g) for c in civilian.calls}
    assert named == set(star.candidates)
    # candidates reset per stage: every candidate scored 1/1 -> doubt from votes only; the vote names Si Qi
    assert ep.metrics["doubt"]["Si Qi"] == 2 * 2 and ep.metrics["accused"] == "Si Qi"


def test_fox_hotel_replaces_clues_and_introduces_every_stage(en):
    fox = load_script_dir(en / "Fox Hotel")
    players = Players(lambda o: ask_first(o))
    cfg = MysteryConfig.mirage(rounds=1)
    play(fox, players, Recorder("j"), Recorder("e"), cfg)
    intro_stages = [o for o in players.seen if o.phase == INTRODUCTION]
    assert len(intro_stages) == 2 * 3  # every character, both stages
    g = MysteryGame.new(fox, 0, cfg)
    g._next_stage(1)
    assert list(g.state.clues) == list(fox.stages[1].clues)  # stage 1's clues are gone
    legacy = MysteryGame.new(fox, 0, MysteryConfig(rounds=1))
    legacy._next_stage(1)
    assert set(legacy.state.clues) == set(fox.stages[0].clues) | set(fox.stages[1].clues)


def test_multi_stage_resets_last_action_and_scores_the_last_stage(en):
    fox = load_script_dir(en / "Fox Hotel")
    # suspicion 2 for statements of stage 1 only: they must not count in the final doubt
    class StageJudge(Recorder):
        async def act(self, obs):
            self.calls.append(obs)
            return Reply(text="RESPONSE: 2" if "[Stage 2]" not in obs.messages[-1]["content"] and
                         obs.phase == JUDGE_SUSPICION else "RESPONSE: 0")

    players = Players(ask_first)
    ep = play(fox, players, StageJudge("j"), Recorder("e"), MysteryConfig.mirage(rounds=1))
    first_of_stage2 = next(o for o in players.seen if o.phase == INTRODUCTION and "[Stage 2]" in o.messages[1]["content"])
    assert "(none yet)" in first_of_stage2.messages[1]["content"].split("Your last thoughts")[1]
    votes = {c: sum(1 for v in ep.metrics["votes"].values() if v == c) for c in fox.characters}
    assert ep.metrics["doubt"] == {c: 3.0 * votes[c] for c in fox.characters}  # stage 1's 2s are forgotten


def test_history_is_summarised_past_its_budget(en):
    bride = load_script_dir(en / "Bride in Filial Dress")
    summariser = Recorder("s", "THOUGHT: short.\nRESPONSE: SUMMARY-OF-THE-GAME")
    players = Players(ask_first)
    ep = play(bride, players, Recorder("j"), Recorder("e"), MysteryConfig.mirage(rounds=2, history_tokens=60),
              summariser=summariser)
    assert summariser.calls and ep.metrics["history_summaries"] == len(summariser.calls)
    late = players.seen[-1].messages[1]["content"]
    assert "SUMMARY-OF-THE-GAME" in late and "[Case]" not in late


def test_chinese_script_is_prompted_in_chinese(zh):
    fox = load_script_dir(zh / "狐狸旅馆")
    zh_prompts = load_prompts("Zh")
    g = MysteryGame.new(fox, 0, MysteryConfig.mirage(rounds=1))
    obs = g.observation()
    head = zh_prompts["player_system"].split("{")[0].strip()
    assert head and head in obs.messages[0]["content"]
    assert re.search(r"[\u4e00-\u9fff]", zh_prompts["converse"]) and "RESPONSE:" in obs.messages[1]["content"]
    g.state.phase, g.state.cursor = CONVERSE, 0
    me = g.actor()
    other = next(c for c in g.state.order if c != me)
    g.apply(g.observation(), Reply(text=f"THOUGHT: 想想。\nRESPONSE: 【询问】【{other}】：你昨晚在哪里？"))
    assert g.state.turns[-1]["action"] == f"Ask {other}: 你昨晚在哪里？"


def test_user_prompts_override_key_by_key_and_are_checked(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "en.yaml").write_text("vote: 'Name the killer among {suspects}.'\n", encoding="utf-8")
    table = load_prompts("En", str(d))
    assert table["vote"] == "Name the killer among {suspects}." and table["answer"] == load_prompts("En")["answer"]
    (d / "en.yaml").write_text("vote: 'Name the killer: {truth}'\n", encoding="utf-8")
    load_prompts.cache_clear()
    with pytest.raises(ValueError, match="vote.*truth"):
        load_prompts("En", str(d))
    (d / "en.yaml").write_text("nonsense: x\n", encoding="utf-8")
    load_prompts.cache_clear()
    with pytest.raises(ValueError, match="unknown prompt 'nonsense'"):
        load_prompts("En", str(d))
    with pytest.raises(FileNotFoundError, match="zh.yaml"):
        load_prompts("Zh", str(d))
