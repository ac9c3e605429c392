"""Offline tests of the downstream area: verdict parsing, extraction and scoring, loaders, intervals, the debate
protocols and the runner with scripted agents, the AutoGen system with AutoGen's replay client, and the CLI."""

from __future__ import annotations

import json

import pytest

from stratagem.games.core import Reply
from stratagem.integrations import autogen_teams, debate, mas_eval
from stratagem.integrations.benchmarks import (
    BenchmarkFormatError,
    Question,
    choice_letter,
    extract_answer,
    gpqa_question,
    gsm8k_gold,
    is_correct,
    last_boxed,
    last_number,
    load_benchmark,
)
from stratagem.integrations.debate import (
    ChatConfig,
    DuConfig,
    DuDebate,
    MADConfig,
    MADDebate,
    majority_vote,
    parse_verdict,
)
from stratagem.integrations.mas_eval import EvalConfig, bootstrap_interval, paired_difference, run_eval

# ---- the moderator's JSON ----------------------------------------------------------------------------------------


def test_verdict_valid_json():
    v = parse_verdict('{"Whether there is a preference": "Yes", "Supported Side": "Negative", '
                      '"Reason": "they computed 16-3-4", "debate_answer": "\\\\boxed{18}"}')
    assert (v.preference, v.supported_side, v.reason, v.answer, v.parsed, v.missing) == \
        (True, "negative", "they computed 16-3-4", "\\boxed{18}", True, [])


def test_verdict_with_trailing_and_leading_text():
    v = parse_verdict('Here is my verdict:\n```json\n{"Whether there is a preference": "No", "Supported Side": "", '
                      '"Reason": "", "debate_answer": ""}\n```\nThe debate continues {next round}.')
    assert v.parsed and v.preference is False and v.answer == "" and v.missing == []


def test_verdict_single_quotes_and_apostrophes():
    v = parse_verdict("{'Whether there is a preference': 'Yes', 'Supported Side': 'Affirmative', "
                      "'Reason': \"it's right\", 'debate_answer': '42'}")
    assert (v.preference, v.supported_side, v.reason, v.answer) == (True, "affirmative", "it's right", "42")


def test_verdict_missing_fields_and_bare_values():
    v = parse_verdict('{"Whether there is a preference": Yes, "debate_answer": 7')  # cut off, unquoted
    assert v.parsed and v.preference is True and v.answer == "7"
    assert v.missing == ["supported_side", "reason"]


def test_verdict_without_json_is_no_preference():
    v = parse_verdict("I think the affirmative side is right, the answer is 5.")
    assert not v.parsed and not v.preference and v.answer == "" and len(v.missing) == 4


def test_verdict_skips_objects_without_known_fields():
    v = parse_verdict('{"x": 1} then {"debate_answer": "3", "Reason": "sum"}')
    assert v.answer == "3" and v.reason == "sum"


# ---- extraction and scoring --------------------------------------------------------------------------------------


def test_last_boxed_nested_and_unclosed():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("cut off \\boxed{12") is None


def test_last_number():
    assert last_number("She pays $1,234.50 and then 7 more.") == "7"
    assert last_number("The total is 18.0") == "18"
    assert last_number("a drop of -3.5 degrees") == "-3.5"
    assert last_number("no digits") is None


def test_choice_letter():
    assert choice_letter("Option (A) fails, so the answer is (C).") == "C"
    assert choice_letter("I pick \\boxed{b}") == "B"
    assert choice_letter("Between (A) and (D), (D) holds") == "D"
    assert choice_letter("none of them") is None


def test_extract_answer_prefers_box_over_last_number():
    assert extract_answer("\\boxed{18} since 16 - 3 - 4 = 9 and 9 * 2 = 18 dollars, not 5") == "18"
    assert extract_answer("16 - 3 - 4 = 9, 9 * 2 = 18") == "18"
    assert extract_answer("The answer is (B)", "choice") == "B"


def test_is_correct_worked_examples():
    assert is_correct("18", "18")
    assert is_correct("18.00", "18")
    assert is_correct("\\frac{1}{2}", "0.5")
    assert is_correct("\\$18", "18")
    assert not is_correct("17", "18")
    assert not is_correct(None, "18")
    assert not is_correct("  ", "18")
    assert is_correct("c", "C", "choice") and not is_correct("B", "C", "choice")


def test_gsm8k_gold():
    assert gsm8k_gold("16 - 3 - 4 = <<16-3-4=9>>9\n#### 1,800") == "1800"
    assert gsm8k_gold("no marker") is None


# ---- loaders -----------------------------------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_gsm8k_and_limit(tmp_path):
    f = _write(tmp_path / "g.jsonl", [json.dumps({"question": f"q{i}", "answer": f"work\n#### {i}"}) for i in range(5)])
    qs = load_benchmark("gsm8k", f, limit=2)
    assert [(q.id, q.prompt, q.gold, q.kind) for q in qs] == [("1", "q0", "0", "math"), ("2", "q1", "1", "math")]


def test_load_problem_answer_float_gold(tmp_path):
    f = _write(tmp_path / "amc.jsonl", [json.dumps({"id": 0, "problem": "p", "answer": 27.0})])
    assert load_benchmark("amc", f)[0].gold == "27"


@pytest.mark.parametrize("bad, expect", [
    ('{"question": "q", "answer": "a\\n#### 1"}\n{not json', ":2: not valid JSON"),
    ('{"question": "q"}', ":1: missing field(s) answer"),
    ('{"question": "q", "answer": "no marker"}', ":1: answer has no '#### <number>' line"),
    ('["a list"]', ":1: expected a JSON object"),
])
def test_malformed_file_names_file_and_line(tmp_path, bad, expect):
    f = tmp_path / "bad.jsonl"
    f.write_text(bad + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkFormatError) as e:
        load_benchmark("gsm8k", f)
    assert str(f) in str(e.value) and expect in str(e.value)


def test_load_errors_on_unknown_and_missing(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", tmp_path / "x.jsonl")
    with pytest.raises(BenchmarkFormatError, match="does not exist"):
        load_benchmark("gsm8k", tmp_path / "absent.jsonl")


def test_gpqa_csv_shuffles_with_seed(tmp_path):
    import csv

    f = tmp_path / "gpqa.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                    "Incorrect Answer 3"])
        w.writerow(["r1", "Which is prime?", "7", "8", "9", "10"])
        w.writerow(["r2", "Which is even?", "4", "5", "7", "9"])
    qs = load_benchmark("gpqa", f, seed=3)
    assert [q.kind for q in qs] == ["choice", "choice"]
    for q, correct in zip(qs, ("7", "4")):
        assert f"({q.gold}) {correct}" in q.prompt
    assert load_benchmark("gpqa", f, seed=3)[0].prompt == qs[0].prompt  # same seed, same order
    orders = {gpqa_question({"Question": "q", "Correct Answer": "a", "Incorrect Answer 1": "b",
                             "Incorrect Answer 2": "c", "Incorrect Answer 3": "d"}, "x", s).gold for s in range(20)}
    assert len(orders) > 1  # the correct option does move


def test_gpqa_missing_column_names_line(tmp_path):
    f = tmp_path / "gpqa.csv"
    f.write_text("Question,Correct Answer\nq,a\n", encoding="utf-8")
    with pytest.raises(BenchmarkFormatError, match=r"gpqa.csv:2: missing field\(s\) Incorrect Answer 1"):
        load_benchmark("gpqa", f)


# ---- intervals ---------------------------------------------------------------------------------------------------


def test_bootstrap_and_paired_difference():
    assert bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)
    lo, hi = bootstrap_interval([0.0, 1.0] * 50, seed=1)
    assert lo < 0.5 < hi and hi - lo < 0.3
    d = paired_difference({"a": True, "b": False, "c": True}, {"a": True, "b": True, "c": False, "d": True})
    assert d["n"] == 3 and d["diff"] == 0.0  # (0 + 1 - 1) / 3 on the shared a, b, c
    d = paired_difference({"a": False, "b": False}, {"a": True, "b": True})
    assert d["diff"] == 1.0 and d["ci95"] == [1.0, 1.0]


def test_majority_vote():
    assert majority_vote(["3", None, "5", "5"]) == "5"
    assert majority_vote(["3", "5"]) == "3"  # tie: first seen
    assert majority_vote([None, ""]) is None


# ---- protocols with scripted agents ------------------------------------------------------------------------------


class Scripted:
    """Stands in for LLMAgent: replies by the speaker's role, counting calls."""

    def __init__(self, by_role):
        self.by_role = by_role
        self.seen = []

    async def act(self, obs):
        self.seen.append((obs.role, obs.messages[-1]["content"]))
        reply = self.by_role[obs.role]
        return Reply(text=reply(obs) if callable(reply) else reply, finish_reason="stop")

    async def aclose(self):
        pass


Q = Question(id="1", benchmark="gsm8k", prompt="Janet has 16 eggs, eats 3, bakes 4, sells at $2. Dollars?", gold="18")


async def test_mad_stops_at_moderator_preference(monkeypatch):
    fake = Scripted({"affirmative": "16-3-4=9, 9*2 = \\boxed{18}", "negative": "I say \\boxed{9}",
                     "moderator": 'Sure. {"Whether there is a preference": "Yes", "Supported Side": "Affirmative", '
                                  '"Reason": "doubling", "debate_answer": "18"}'})
    monkeypatch.setattr(debate, "make_llm", lambda chat: fake)
    sol = await MADDebate(MADConfig(rounds=3)).solve(Q)
    assert sol.prediction == "18" and sol.calls == 3
    assert sol.meta["decided_by"] == "moderator" and sol.meta["rounds"] == 1
    said = [(m["agent"], m["role"]) for m in sol.transcript if m["role"] != "system"]
    assert said == [("affirmative", "user"), ("affirmative", "assistant"), ("negative", "user"),
                    ("negative", "assistant"), ("moderator", "user"), ("moderator", "assistant")]
    assert fake.seen[1][1].startswith("16-3-4=9") and "You do not accept my answer" in fake.seen[1][1]


async def test_mad_goes_to_judge_when_moderator_never_decides(monkeypatch):
    fake = Scripted({"affirmative": "it is 18", "negative": "it is 9", "moderator": "no json here, keep going",
                     "judge": lambda obs: ("candidates: 18, 9" if "candidate answers" in obs.messages[-1]["content"]
                                           else "{'Reason': 'check', 'debate_answer': '9'}")})
    monkeypatch.setattr(debate, "make_llm", lambda chat: fake)
    sol = await MADDebate(MADConfig(rounds=2)).solve(Q)
    assert sol.calls == 2 * 3 + 2 and sol.meta["decided_by"] == "judge" and sol.meta["rounds"] == 2
    assert sol.prediction == "9"
    assert "Do you accept my view" in [c for r, c in fake.seen if r == "affirmative"][1]


async def test_du_debate_rounds_and_vote(monkeypatch):
    answers = iter(["\\boxed{18}", "\\boxed{9}", "\\boxed{18}", "\\boxed{18}", "\\boxed{9}", "\\boxed{18}"])
    fake = Scripted({f"agent-{i}": lambda obs: next(answers) for i in range(3)})
    monkeypatch.setattr(debate, "make_llm", lambda chat: fake)
    sol = await DuDebate(DuConfig(agents=3, rounds=1)).solve(Q)
    assert sol.calls == 6 and sol.meta["votes"] == ["18", "9", "18"] and sol.prediction == "18"
    revise = [c for r, c in fake.seen[3:]]
    assert all(c.count("Another agent's solution") == 2 for c in revise)


def test_protocol_configs_are_checked():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        MADDebate(MADConfig(rounds=0))
    with pytest.raises(ValueError, match="agents >= 1"):
        DuDebate(DuConfig(agents=0))
    with pytest.raises(ValueError, match="unknown AutoGen team"):
        autogen_teams.AutoGenSystem(autogen_teams.AutoGenConfig(team="swarm"))


async def test_autogen_two_agent_team_with_replay_client(monkeypatch):
    from autogen_ext.models.replay import ReplayChatCompletionClient

    replies = ["16 - 3 - 4 = 9", "Check the price.", "9 * 2 = \\boxed{18} TERMINATE", "unused"]
    monkeypatch.setattr(autogen_teams, "model_client",
                        lambda *a, **k: ReplayChatCompletionClient(replies, model_info=autogen_teams.MODEL_INFO))
    sol = await autogen_teams.AutoGenSystem(autogen_teams.AutoGenConfig(chat=ChatConfig())).solve(Q)
    assert [m["agent"] for m in sol.transcript] == ["user", "assistant", "user_proxy", "assistant"]
    assert sol.prediction == "18" and "TERMINATE" not in sol.final_text and sol.calls == 3


async def test_autogen_two_agent_team_stops_after_three_solver_turns(monkeypatch):
    from autogen_ext.models.replay import ReplayChatCompletionClient

    monkeypatch.setattr(autogen_teams, "model_client",
                        lambda *a, **k: ReplayChatCompletionClient([f"step {i}" for i in range(10)],
                                                                   model_info=autogen_teams.MODEL_INFO))
    sol = await autogen_teams.AutoGenSystem(autogen_teams.AutoGenConfig()).solve(Q)
    assert [m["agent"] for m in sol.transcript].count("assistant") == 3 and sol.prediction == "4"


# ---- the runner --------------------------------------------------------------------------------------------------


class CountingSystem:
    def __init__(self, model, fail=()):
        self.model, self.fail, self.asked = model, set(fail), []

    async def solve(self, q):
        self.asked.append(q.id)
        if q.id in self.fail:
            raise ConnectionError("endpoint down")
        pred = q.gold if (self.model == "good" or q.id == "1") else "0"
        return debate.Solution(prediction=pred, final_text=pred, calls=1,
                               transcript=[{"agent": "solver", "role": "assistant", "content": pred}])


async def test_run_eval_pairs_saves_and_resumes(monkeypatch, tmp_path):
    qs = [Question(id=str(i), benchmark="gsm8k", prompt=f"q{i}", gold=str(i)) for i in range(1, 5)]
    made, runs = {}, []

    def make(config, model, repeat=0):
        runs.append(model)
        made[model] = CountingSystem(model, fail={"4"} if model == "good" and len(runs) <= 2 else ())
        return made[model]

    monkeypatch.setattr(mas_eval, "make_system", make)
    cfg = EvalConfig(system="single", models=["weak", "good"], out=str(tmp_path / "run"))
    s = await run_eval(cfg, qs)
    assert s["models"]["weak"]["correct"] == 1 and s["models"]["weak"]["n"] == 4
    assert s["models"]["good"]["correct"] == 3 and s["models"]["good"]["errors"] == 1
    assert s["paired_difference"]["good"]["n"] == 4 and s["paired_difference"]["good"]["diff"] == 0.5
    lines = (tmp_path / "run" / "good.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["transcript"]

    made.clear()
    s = await run_eval(cfg, qs)  # resume: only the failed question is asked again
    assert made["weak"].asked == [] and made["good"].asked == ["4"]
    assert s["resumed"] == 7 and s["models"]["good"]["correct"] == 4 and s["models"]["good"]["errors"] == 0

    # a kill halfway through a record: the torn tail is cut before the next record, which is not glued onto it
    path = tmp_path / "run" / "weak.jsonl"
    committed = path.read_bytes()
    path.write_bytes(committed + b'{"id": "9", "benchm')
    s = await run_eval(cfg, qs + [Question(id="5", benchmark="gsm8k", prompt="q5", gold="5")])
    assert made["weak"].asked == ["5"] and path.read_bytes().startswith(committed)
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["1", "2", "3", "4", "5"]
    # committed records that changed are an error naming the file, not a silent re-ask
    path.write_text(path.read_text().replace('"id": "2"', '"id": "7"'))
    from stratagem.files import StoreDamage

    with pytest.raises(StoreDamage, match="weak.jsonl"):
        await run_eval(cfg, qs)


async def test_run_eval_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown system 'chorus'"):
        await run_eval(EvalConfig(system="chorus"), [Q])
    with pytest.raises(ValueError, match="unknown interval"):
        await run_eval(EvalConfig(ci="normal"), [Q])
    with pytest.raises(ValueError, match="distinct served models"):
        await run_eval(EvalConfig(models=["base", "base"]), [Q])


# ---- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_eval_mas_malformed_file(tmp_path):
    from typer.testing import CliRunner

    from stratagem.cli import app

    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n', encoding="utf-8")
    r = CliRunner().invoke(app, ["eval", "mas", "--benchmark", "gsm8k", "--data", str(f), "--base-url",
                                 "http://127.0.0.1:9/v1"])
    assert r.exit_code == 1 and f"{f}:2: missing field(s) answer" in r.output


def test_cli_eval_mas_rejects_unknown_system():
    from typer.testing import CliRunner

    from stratagem.cli import app

    r = CliRunner().invoke(app, ["eval", "mas", "--system", "chorus", "--benchmark", "gsm8k"])
    assert r.exit_code != 0 and "--system expects one of" in r.output
