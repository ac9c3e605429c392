"""The two benchmarks MARSHAL adds (AQUA-RAT, MMLU-STEM) on fixtures made here, letters A-E, MASLab's seeded
sample, and repeats with their interval over questions."""

from __future__ import annotations

import json
import random

import pytest

from stratagem.integrations import mas_eval
from stratagem.integrations.benchmarks import (
    MMLU_STEM_SUBJECTS,
    BenchmarkFormatError,
    Question,
    choice_letter,
    extract_answer,
    load_benchmark,
    maslab_sample,
)
from stratagem.integrations.debate import Solution
from stratagem.integrations.mas_eval import EvalConfig, run_eval


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


AQUA = [{"question": "Two plus three?", "options": ["A)4", "B)5", "C)6", "D)7", "E)None of these"],
         "rationale": "2 + 3 = 5", "correct": "B"},
        {"question": "Which is largest?", "options": ["A) 1", "B) 2", "C) 3", "D) 4", "E) 5"], "rationale": "",
         "correct": "E"}]


def test_aqua_rat_has_five_lettered_options_and_scores_e(tmp_path):
    qs = load_benchmark("aqua", _jsonl(tmp_path / "aqua.jsonl", AQUA))
    assert [q.gold for q in qs] == ["B", "E"] and all(q.kind == "choice" and q.letters == "ABCDE" for q in qs)
    assert qs[0].prompt == "Two plus three?\n\n(A) 4\n(B) 5\n(C) 6\n(D) 7\n(E) None of these"
    assert extract_answer("so the answer is (E).", "choice", qs[1].letters) == "E"
    assert choice_letter("so the answer is (E).") is None  # four-option questions never read an E
    bad = [dict(AQUA[0], options=AQUA[0]["options"][:4])]
    with pytest.raises(BenchmarkFormatError, match=r"bad.jsonl:1: expected five options"):
        load_benchmark("aqua", _jsonl(tmp_path / "bad.jsonl", bad))


def test_the_shared_aqua_file_loads_whole():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "aqua" / "test.json"
    if not path.is_file():
        pytest.skip("no shared AQUA-RAT file in this checkout")
    qs = load_benchmark("aqua", path)
    assert len(qs) == 254 and {q.gold for q in qs} <= set("ABCDE")


def test_mmlu_stem_keeps_the_18_stem_subjects_and_maps_answer_indices(tmp_path):
    rows = [{"question": "d/dx x^2?", "choices": ["x", "2x", "x^2", "2"], "answer": 1, "subject": "college_mathematics"},
            {"question": "Who wrote Hamlet?", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "world_religions"},
            {"question": "Unit of force?", "choices": ["J", "W", "N", "Pa"], "answer": "C",
             "subject": "high_school_physics"}]
    qs = load_benchmark("mmlu_stem", _jsonl(tmp_path / "mmlu.jsonl", rows))
    assert [(q.gold, q.benchmark, q.letters) for q in qs] == [("B", "mmlu_stem", "ABCD"), ("C", "mmlu_stem", "ABCD")]
    assert qs[0].prompt.endswith("(A) x\n(B) 2x\n(C) x^2\n(D) 2")
    assert len(MMLU_STEM_SUBJECTS) == 18 and "anatomy" not in MMLU_STEM_SUBJECTS  # anatomy is MMLU's "health"
    with pytest.raises(BenchmarkFormatError, match="missing field"):
        load_benchmark("mmlu_stem", _jsonl(tmp_path / "x.jsonl", [{"question": "q", "choices": [], "answer": 0}]))


def test_maslab_sample_is_one_seed_2024_shuffle_then_500_without_repeats():
    """MASLab's datasets/build_test_dataset.py: random.seed(2024); random.shuffle(pool); pool[:500]; deduplicate
    by query. The module-level calls and a Random(2024) instance give the same order."""
    qs = [Question(id=str(i), benchmark="gsm8k", prompt=f"q{i % 700}", gold="0") for i in range(800)]
    ids = [q.id for q in qs]
    random.seed(2024)
    random.shuffle(ids)
    first = ids[:500]
    seen, want = set(), []
    for i in first:
        prompt = f"q{int(i) % 700}"
        if prompt not in seen:
            seen.add(prompt)
            want.append(i)
    got = maslab_sample(qs)
    assert [q.id for q in got] == want and len(want) < 500  # ids 700+ repeat prompts 0..99
    small = qs[:30]
    assert sorted(q.id for q in maslab_sample(small)) == sorted(q.id for q in small)  # AIME-sized: kept whole
    assert [q.id for q in maslab_sample(small)] != [q.id for q in small]  # in the shuffled order


def test_load_benchmark_sample_maslab_then_limit(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(40)]
    path = _jsonl(tmp_path / "g.jsonl", rows)
    first = load_benchmark("gsm8k", path, limit=3)
    sampled = load_benchmark("gsm8k", path, limit=3, sample="maslab")
    assert [q.gold for q in first] == ["0", "1", "2"]
    assert [q.id for q in sampled] == [q.id for q in maslab_sample(load_benchmark("gsm8k", path))][:3]
    with pytest.raises(BenchmarkFormatError, match="sample must be"):
        load_benchmark("gsm8k", path, sample="random")


class Flaky:
    """Right on question 1 always; on question 2 only in repeat 0 (its seed is config.seed + repeat)."""

    def __init__(self, repeat):
        self.repeat = repeat

    async def solve(self, q):
        right = q.id == "1" or (q.id == "2" and self.repeat == 0)
        pred = q.gold if right else "-1"
        return Solution(prediction=pred, final_text=pred, calls=1, transcript=[])


async def test_repeats_answer_each_question_k_times_and_pair_per_question_means(monkeypatch, tmp_path):
    qs = [Question(id=str(i), benchmark="gsm8k", prompt=f"q{i}", gold=str(i)) for i in (1, 2, 3)]
    made = []

    def make(config, model, repeat=0):
        made.append((model, repeat, config.seed + repeat))
        return Flaky(repeat) if model == "a" else Flaky(0)

    monkeypatch.setattr(mas_eval, "make_system", make)
    cfg = EvalConfig(models=["a", "b"], repeats=2, seed=10, out=str(tmp_path))
    s = await run_eval(cfg, qs)
    assert sorted(made) == [("a", 0, 10), ("a", 1, 11), ("b", 0, 10), ("b", 1, 11)]
    a, b = s["models"]["a"], s["models"]["b"]
    # a: question 1 twice, question 2 once, question 3 never = 3 of 6; b: questions 1 and 2 both times = 4 of 6
    assert (a["n"], a["questions"], a["correct"], a["accuracy"]) == (6, 3, 3, 0.5)
    assert (b["correct"], b["accuracy"]) == (4, pytest.approx(4 / 6))
    d = s["paired_difference"]["b"]
    assert d["n"] == 3 and d["diff"] == pytest.approx((0 + 0.5 + 0) / 3)  # per-question means: (1, .5, 0) vs (1, 1, 0)
    ids = [json.loads(x)["id"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["1", "1@1", "2", "2@1", "3", "3@1"]
    again = await run_eval(cfg, qs)  # resumes: every record is there
    assert again["resumed"] == 12 and again["models"] == s["models"]


def test_average_difference_is_the_mean_of_benchmark_differences_with_a_stratified_interval():
    from stratagem.integrations.mas_table import average_difference

    # benchmark 1: the other model gains one question of two (+0.5); benchmark 2: loses none of one (0): mean +0.25
    pairs = [({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0}), ({"c": 1.0}, {"c": 1.0})]
    d = average_difference(pairs, samples=400, seed=0)
    assert d["diff"] == pytest.approx(0.25) and d["benchmarks"] == 2
    lo, hi = d["ci95"]
    assert lo == pytest.approx(0.0) and hi == pytest.approx(0.5)  # benchmark 1's resample gives 0, .5 or 1 over 2
    assert average_difference([({}, {})]) == {"diff": 0.0, "ci95": [0.0, 0.0], "benchmarks": 0}


async def test_the_table_runs_every_pair_and_lays_it_out_like_table_1(monkeypatch, tmp_path):
    from stratagem.integrations.mas_table import run_table, table_markdown

    def make(config, model, repeat=0):
        return Flaky(0) if model == "trained" else Flaky(1)  # trained: questions 1 and 2; base: question 1 only

    monkeypatch.setattr(mas_eval, "make_system", make)
    qs = {b: [Question(id=str(i), benchmark=b, prompt=f"{b} q{i}", gold=str(i)) for i in (1, 2)]
          for b in ("gsm8k", "aime")}
    cfg = EvalConfig(models=["base", "trained"], seed=0, bootstrap_samples=200)
    result = await run_table(cfg, ["mad", "autogen"], qs, tmp_path)
    block = result["systems"]["mad"]
    assert block["models"]["base"] == {"gsm8k": 0.5, "aime": 0.5, "average": 0.5}
    assert block["models"]["trained"]["average"] == 1.0 and block["diff"]["trained"]["average"]["diff"] == 0.5
    assert (tmp_path / "autogen" / "aime" / "trained.jsonl").is_file()
    md = table_markdown(result).splitlines()
    assert md[0] == "| MAS | model | GSM8K | AIME24 | Avg. |"
    assert md[2] == "| mad | base | 50.0 | 50.0 | 50.0 |" and md[3] == "| mad | trained | 100.0 | 100.0 | 100.0 |"
    assert md[4].startswith("| mad | trained - base | +50.0 [")
    assert len(md) == 2 + 2 * 3


def test_a_marshal_run_makes_maslab_the_default_protocol(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from stratagem.cli import app

    seen = {}

    async def fake_run_eval(cfg, questions, on_result=None):
        seen["protocol"], seen["temperature"], seen["max_tokens"] = cfg.protocol, cfg.temperature, cfg.max_tokens
        return {"system": cfg.system, "models": {"base": {"n": 0, "accuracy": 0.0, "ci95": [0, 1], "errors": 0}},
                "paired_difference": {}, "reference": "base"}

    monkeypatch.setattr(mas_eval, "run_eval", fake_run_eval)
    data = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}])
    for preset, want in (("marshal", ("maslab", 0.5, 2048)), ("laptop", ("stratagem", 0.7, 256))):
        run = tmp_path / preset
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"loop": {"preset": preset}}))
        r = CliRunner().invoke(app, ["eval", "mas", "--benchmark", "gsm8k", "--data", str(data), "--run", str(run),
                                     "--base-url", "http://127.0.0.1:9/v1", "--json"])
        assert r.exit_code == 0, r.output
        assert (seen["protocol"], seen["temperature"], seen["max_tokens"]) == want


def test_the_marshal_reference_prints_its_published_cells_and_n_a_elsewhere(tmp_path):
    from stratagem.integrations.mas_table import load_reference, table_markdown

    ref = load_reference("marshal")
    assert ref["rows"] == ["Qwen3-4B", "MARSHAL"]
    # the headline gains of the paper are differences of these cells: GPQA-D +7.57 in MAD, AIME +10.0 in AutoGen
    mad, autogen = ref["systems"]["mad"], ref["systems"]["autogen"]
    assert mad["MARSHAL"]["gpqa"] - mad["Qwen3-4B"]["gpqa"] == pytest.approx(7.57)
    assert autogen["MARSHAL"]["aime"] - autogen["Qwen3-4B"]["aime"] == pytest.approx(10.0)
    result = {"models": ["base"], "benchmarks": ["aime", "gpqa"],
              "systems": {"mad": {"models": {"base": {"aime": 0.5, "gpqa": 0.25, "average": 0.375}}, "diff": {}}}}
    md = table_markdown(result, ref).splitlines()
    assert md[2] == "| mad | base | 50.0 | 25.0 | 37.5 |"
    assert md[3] == "| mad | Qwen3-4B (paper) | n/a | 37.88 | n/a |"
    assert md[4] == "| mad | MARSHAL (paper) | n/a | 45.45 | n/a |"
    assert md[5] == "| mad | MARSHAL - Qwen3-4B (paper) | n/a | +7.57 | n/a |"
    assert "arXiv 2510.15414v2" in md[-1]


def test_a_users_reference_file_is_checked_before_anything_runs(tmp_path):
    import yaml

    from stratagem.integrations.mas_table import load_reference

    good = {"source": "my table", "rows": ["a", "b"],
            "systems": {"mad": {"a": {"gsm8k": 90.0, "average": 90.0}, "b": {"gsm8k": 91.5, "average": 91.5}}}}
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(good))
    assert load_reference(str(path))["systems"]["mad"]["b"]["gsm8k"] == 91.5
    for broken, message in ((dict(good, rows=[]), "non-empty `rows`"),
                            (dict(good, systems={"mad": {"a": {"gsm8k": 1.0}}}), "exactly the rows"),
                            (dict(good, systems={"mad": {"a": {"gsm9k": 1.0}, "b": {"gsm8k": "x"}}}), "gsm9k")):
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ValueError, match=message):
            load_reference(str(path))
    with pytest.raises(ValueError, match="marshal or a YAML file"):
        load_reference(str(tmp_path / "missing.yaml"))
