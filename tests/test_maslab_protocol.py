"""`--protocol maslab`: MASLab's MAD and AutoGen message flow on scripted models (who speaks, in what order, what
each reads, when it stops, which answer is scored), thinking removed and cut-off replies counted, the prompt file."""

from __future__ import annotations

import pytest

from stratagem.games.core import Reply
from stratagem.integrations import debate, maslab
from stratagem.integrations.benchmarks import Question
from stratagem.integrations.debate import ChatConfig
from stratagem.integrations.maslab import MASLabAutoGen, MASLabMAD, load_prompts, visible

Q = Question(id="1", benchmark="gsm8k", prompt="Janet has 16 eggs, eats 3, bakes 4, sells at $2. Dollars?", gold="18")


class Scripted:
    """Replies by role from a list per role (the last one repeats); records what each speaker was sent."""

    def __init__(self, by_role, finish=None):
        self.by_role, self.finish, self.sent, self.i = by_role, finish or {}, [], {}

    async def act(self, obs):
        self.sent.append((obs.role, [dict(m) for m in obs.messages]))
        k = self.i.get(obs.role, 0)
        self.i[obs.role] = k + 1
        texts = self.by_role[obs.role]
        return Reply(text=texts[min(k, len(texts) - 1)], finish_reason=self.finish.get(obs.role, "stop"))

    async def aclose(self):
        pass


def _mad(monkeypatch, fake, **kw):
    monkeypatch.setattr(maslab, "make_llm", lambda chat: fake)
    return MASLabMAD(ChatConfig(), **kw)


async def test_mad_stops_on_a_debate_answer_even_without_a_preference(monkeypatch):
    fake = Scripted({"affirmative": ["<think>16-3-4</think>9 * 2 = 18"], "negative": ["it is 9"],
                     "moderator": ['{"Whether there is a preference": "No", "Supported Side": "", "Reason": "",'
                                   ' "debate_answer": "18"}']})
    sol = await _mad(monkeypatch, fake).solve(Q)
    assert sol.prediction == "18" and sol.calls == 3 and sol.meta["decided_by"] == "moderator"
    assert sol.meta["rounds"] == 1
    (role0, aff), (role1, neg), (role2, mod) = fake.sent
    assert aff[0]["role"] == "system" and Q.prompt in aff[0]["content"]
    assert aff[-1] == {"role": "user", "content": Q.prompt}  # the raw question: no answer-format line
    assert neg[-1]["content"].startswith("9 * 2 = 18") and "<think>" not in neg[-1]["content"]  # thinking removed
    assert "The first round" in mod[-1]["content"] and "it is 9" in mod[-1]["content"]


async def test_mad_judge_reads_the_first_rounds_answers_after_three_rounds(monkeypatch):
    fake = Scripted({"affirmative": ["aff round 1", "aff round 2", "aff round 3"],
                     "negative": ["neg round 1", "neg round 2", "neg round 3"],
                     "moderator": ['{"Whether there is a preference": "No", "debate_answer": ""}'],
                     "judge": ["18 or 9", '{"Reason": "doubling", "debate_answer": "18"}']},
                    finish={"negative": "length"})
    sol = await _mad(monkeypatch, fake).solve(Q)
    assert sol.meta["decided_by"] == "judge" and sol.meta["rounds"] == 3 and sol.prediction == "18"
    assert sol.calls == 3 * 3 + 2 and sol.meta["cut_off"] == 3  # the negative side hit the budget every round
    order = [r for r, _ in fake.sent]
    assert order == ["affirmative", "negative", "moderator"] * 3 + ["judge", "judge"]
    aff_round2 = fake.sent[3][1][-1]["content"]
    assert aff_round2.startswith("neg round 1")  # later rounds: the other side's latest answer
    moderator_round3 = fake.sent[8][1]
    assert len(moderator_round3) == 1 + 2 * 2 + 1  # the moderator keeps its history over the rounds
    judge_first = fake.sent[9][1]
    assert judge_first[0]["content"] == fake.sent[2][1][0]["content"]  # the moderator's system prompt
    assert "aff round 1" in judge_first[-1]["content"] and "neg round 1" in judge_first[-1]["content"]
    assert "round 3" not in judge_first[-1]["content"]
    assert Q.prompt in fake.sent[10][1][-1]["content"]


async def test_mad_without_any_answer_scores_nothing(monkeypatch):
    fake = Scripted({"affirmative": ["18"], "negative": ["9"], "moderator": ["no json"], "judge": ["no json"]})
    sol = await _mad(monkeypatch, fake, rounds=1).solve(Q)
    assert sol.prediction is None and sol.final_text == ""


def _replay(monkeypatch, replies):
    from autogen_ext.models.replay import ReplayChatCompletionClient

    from stratagem.integrations import autogen_teams

    clients = []

    def make(*a, **k):
        clients.append(ReplayChatCompletionClient(replies, model_info=autogen_teams.MODEL_INFO))
        return clients[-1]

    monkeypatch.setattr(autogen_teams, "model_client", make)
    return clients


async def test_autogen_stops_when_the_user_proxy_says_terminate_and_scores_the_assistant(monkeypatch):
    _replay(monkeypatch, ["16 - 3 - 4 = 9, so \\boxed{18}", "Looks right. TERMINATE", "unused"])
    sol = await MASLabAutoGen(ChatConfig()).solve(Q)
    assert [m["agent"] for m in sol.transcript] == ["user", "assistant", "user_proxy"]
    assert sol.transcript[0]["content"] == Q.prompt and sol.prediction == "18" and sol.meta["assistant_turns"] == 1


async def test_autogen_runs_at_most_three_assistant_turns(monkeypatch):
    _replay(monkeypatch, [f"<think>hm</think>step {i}" for i in range(10)])
    sol = await MASLabAutoGen(ChatConfig()).solve(Q)
    agents = [m["agent"] for m in sol.transcript]
    assert agents == ["user", "assistant", "user_proxy", "assistant", "user_proxy", "assistant"]
    assert sol.final_text == "step 4" and sol.prediction == "4"  # the last assistant reply, thinking removed


def test_autogen_user_proxy_has_no_system_message():
    team = MASLabAutoGen(ChatConfig()).team(client=None)
    assistant, proxy = team._participants
    assert proxy._system_messages == [] and "TERMINATE" in assistant._system_messages[0].content


def test_visible_and_the_prompt_file(tmp_path):
    assert visible("<think>a</think> b <think>c</think>d") == "b d"
    assert visible("<think>still thinking when cut off") == ""
    shipped = load_prompts()
    assert shipped["autogen_proxy_system"] is None and "{topic}" in shipped["mad_player_system"]
    custom = tmp_path / "p.yaml"
    custom.write_text("\n".join(f"{k}: 'X {{topic}}'" for k in maslab.PROMPT_KEYS))
    assert load_prompts(custom)["mad_judge_decide"] == "X {topic}"
    custom.write_text("mad_player_system: hi\n")
    with pytest.raises(ValueError, match="missing prompt"):
        load_prompts(custom)
    with pytest.raises(ValueError, match="no such file"):
        load_prompts(tmp_path / "none.yaml")


def test_eval_config_picks_the_protocol():
    from stratagem.integrations.mas_eval import EvalConfig, make_system

    assert isinstance(make_system(EvalConfig(system="mad", protocol="maslab"), "base"), MASLabMAD)
    assert isinstance(make_system(EvalConfig(system="autogen", protocol="maslab"), "base"), MASLabAutoGen)
    assert isinstance(make_system(EvalConfig(system="mad"), "base"), debate.MADDebate)
