"""The downstream systems against the real vLLM server: every system on two GSM8K questions, the `eval mas` command,
and both example notebooks. The model is tiny: these assert mechanisms (transcripts, call counts, files, JSON),
never that an answer is right. Replies are kept short to stay within the suite's time budget on a CPU."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stratagem.integrations.benchmarks import load_benchmark
from stratagem.integrations.mas_eval import EvalConfig, run_eval

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / ".." / "shared" / "data" / "gsm8k" / "test.jsonl"
MAX_TOKENS = 24
# 95% Wilson intervals of k correct out of 2, worked by hand (z = 1.96): centre (k + z^2/2) / (2 + z^2),
# half-width z * sqrt(k (2 - k) / 2 + z^2 / 4) / (2 + z^2)
WILSON_OF_2 = {0: (0.0, 0.65762), 1: (0.09453, 0.90547), 2: (0.34238, 1.0)}


@pytest.fixture(scope="module")
def gsm8k_two():
    if not GSM8K.exists():
        pytest.skip(f"GSM8K test file not found at {GSM8K.resolve()} (the shared data folder beside the repository)")
    return load_benchmark("gsm8k", GSM8K, limit=2)


SYSTEMS = {
    "single": dict(),
    "mad": dict(rounds=1),
    "debate": dict(agents=2, rounds=1),
    "autogen": dict(team="two_agent"),
}


async def test_every_system_on_two_gsm8k_questions(vllm_server, gsm8k_two, tmp_path):
    configs = {s: EvalConfig(system=s, models=["base"], base_url=vllm_server.base_url, max_tokens=MAX_TOKENS,
                             out=str(tmp_path / s), seed=0, **kw) for s, kw in SYSTEMS.items()}
    # all four at once: the server batches them
    summaries = dict(zip(configs, await asyncio.gather(*(run_eval(c, gsm8k_two) for c in configs.values()))))
    for system, summary in summaries.items():
        m = summary["models"]["base"]
        recs = [json.loads(line) for line in (tmp_path / system / "base.jsonl").read_text().splitlines()]
        assert m["n"] == 2 and m["errors"] == 0, (system, m, [r["error"] for r in recs])
        correct = sum(r["correct"] for r in recs)
        assert m["accuracy"] == correct / 2 and m["ci95"] == pytest.approx(WILSON_OF_2[correct], abs=1e-4)
        assert sorted(r["id"] for r in recs) == sorted(q.id for q in gsm8k_two)
        for r in recs:
            assert r["gold"] == next(q.gold for q in gsm8k_two if q.id == r["id"])
            said = [t for t in r["transcript"] if t["role"] == "assistant"]
            assert said and all(isinstance(t["content"], str) for t in said), (system, r)
            if system == "single":
                assert r["calls"] == 1 and len(said) == 1
            elif system == "mad":  # one round: affirmative, negative, moderator (+ 2 judge calls if undecided)
                agents = [t["agent"] for t in said]
                assert agents[:3] == ["affirmative", "negative", "moderator"]
                assert r["calls"] == (3 if r["meta"]["decided_by"] == "moderator" else 5) == len(said), r["meta"]
            elif system == "debate":  # two agents, first answers and one revision each
                assert r["calls"] == 4 == len(said) and len(r["meta"]["votes"]) == 2
            else:  # the MARS two-agent team: the solver speaks first, at most three times
                agents = [t["agent"] for t in r["transcript"]]
                assert agents[0] == "user" and agents[1] == "assistant" and 1 <= agents.count("assistant") <= 3, agents
                assert r["calls"] == len(agents) - 1, (agents, r["calls"])


def test_cli_eval_mas_mad_json(vllm_server, gsm8k_two, tmp_path):
    out = tmp_path / "mad"
    cmd = [sys.executable, "-m", "stratagem.cli", "eval", "mas", "--system", "mad", "--benchmark", "gsm8k",
           "--data", str(GSM8K), "--limit", "2", "--models", "base", "--json", "--base-url", vllm_server.base_url,
           "--rounds", "1", "--max-tokens", str(MAX_TOKENS), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    m = summary["models"]["base"]
    assert summary["system"] == "mad" and summary["benchmark"] == "gsm8k" and m["n"] == 2
    recs = [json.loads(line) for line in (out / "base.jsonl").read_text().splitlines()]
    correct = sum(r["correct"] for r in recs)
    assert len(recs) == 2 and m["accuracy"] == correct / 2
    assert m["ci95"] == pytest.approx(WILSON_OF_2[correct], abs=1e-4)
    # a second run resumes: nothing is asked again
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["resumed"] == 2


@pytest.mark.parametrize("name", ["debate.ipynb", "autogen_team.ipynb"])
def test_notebook_runs(vllm_server, name):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "examples" / name, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "STRATAGEM_ADAPTER"}
    env["STRATAGEM_BASE_URL"] = vllm_server.base_url
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "examples")}}).execute(env=env)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert vllm_server.base_url in outputs and "gold" in outputs


def test_cli_eval_games_json(vllm_server, tmp_path):
    cmd = [sys.executable, "-m", "stratagem.cli", "eval", "games", "--models", "base", "--games", "leduc_poker",
           "--opponent", "random", "--episodes", "1", "--max-tokens", "16", "--json", "--base-url",
           vllm_server.base_url, "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    seats = json.loads(r.stdout.strip().splitlines()[-1])["models"]["base"]["leduc_poker"]
    assert set(seats) == {"first", "second"} and all(s["n"] == 1 for s in seats.values())
    ep = json.loads((tmp_path / "base" / "leduc_poker-first.jsonl").read_text().splitlines()[0])
    llm_turns = [t for t in ep["turns"] if t["seat"] == 0]
    assert llm_turns and llm_turns[0]["adapter"] == "base"


@pytest.mark.parametrize("system", ["mad", "autogen"])
def test_cli_eval_mas_maslab_protocol(vllm_server, gsm8k_two, tmp_path, system):
    """`--protocol maslab` against the real server (a short budget so the small model is quick): MASLab's message
    flow runs, the question reaches the first speaker as it is, and the sample is MASLab's seeded one."""
    from stratagem.integrations.benchmarks import maslab_sample

    out = tmp_path / system
    cmd = [sys.executable, "-m", "stratagem.cli", "eval", "mas", "--system", system, "--protocol", "maslab",
           "--benchmark", "gsm8k", "--data", str(GSM8K), "--sample", "maslab", "--limit", "2", "--models", "base",
           "--json", "--base-url", vllm_server.base_url, "--max-tokens", "48", "--rounds", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])["models"]["base"]
    assert m["n"] == 2 and m["errors"] == 0 and m["cut_off_replies"] >= 0
    recs = [json.loads(line) for line in (out / "base.jsonl").read_text().splitlines()]
    want = [q.id for q in maslab_sample(load_benchmark("gsm8k", GSM8K))[:2]]
    assert sorted(r["id"] for r in recs) == sorted(want)
    for rec in recs:
        assert rec["meta"]["protocol"] == "maslab"
        first_user = next(t for t in rec["transcript"] if t["role"] == "user")
        assert "\\boxed" not in first_user["content"] and first_user["content"].strip()
        if system == "mad":
            assert [t["agent"] for t in rec["transcript"] if t["role"] == "assistant"][:3] == \
                ["affirmative", "negative", "moderator"]
        else:
            agents = [t["agent"] for t in rec["transcript"]]
            assert agents[:2] == ["user", "assistant"] and agents.count("assistant") == 1  # --rounds 1: one turn


def test_cli_eval_mas_maslab_table(vllm_server, gsm8k_two, tmp_path):
    """`eval mas --protocol maslab --table` on the real server: MAD and AutoGen on two local benchmarks, laid out as
    MARSHAL's Table 1, saved beside the per-pair records; a rerun resumes every pair."""
    aqua = REPO / ".." / "shared" / "data" / "aqua" / "test.json"
    if not aqua.exists():
        pytest.skip("no shared AQUA-RAT file beside the repository")
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "stratagem.cli", "eval", "mas", "--protocol", "maslab", "--table",
           "--benchmark", "gsm8k,aqua", "--data", f"gsm8k={GSM8K},aqua={aqua}", "--models", "base", "--limit", "2",
           "--max-tokens", "48", "--rounds", "1", "--json", "--base-url", vllm_server.base_url, "--out", str(out),
           "--reference", "marshal"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result["systems"]) == {"mad", "autogen"} and result["benchmarks"] == ["gsm8k", "aqua"]
    for block in result["systems"].values():
        acc = block["models"]["base"]
        assert set(acc) == {"gsm8k", "aqua", "average"} and all(0.0 <= v <= 1.0 for v in acc.values())
        assert acc["average"] == pytest.approx((acc["gsm8k"] + acc["aqua"]) / 2)
    md = (out / "table.md").read_text().splitlines()
    assert md[0] == "| MAS | model | GSM8K | AQUA | Avg. |" and md[2].startswith("| mad | base | ")
    # the paper's rows after ours, n/a where MARSHAL's sources give no GSM8K / AQUA cell
    assert md[3] == "| mad | Qwen3-4B (paper) | n/a | n/a | n/a |" and result["reference"]["name"] == "marshal"
    assert sum("(paper) |" in line for line in md) == 6 and len(md) == 12
    for system in ("mad", "autogen"):
        for bench in ("gsm8k", "aqua"):
            assert len((out / system / bench / "base.jsonl").read_text().splitlines()) == 2
