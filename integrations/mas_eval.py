"""The multi-agent-system benchmark runner: single agent, AutoGen team, MAD and Du-style debate, over several models.

Every model answers the same questions, concurrently (the server batches). Each finished question is appended at
once to `OUT/<model>.jsonl` (prediction, gold, correct, the whole transcript), so a run can be inspected while it
goes and resumed after a stop: questions already answered without error are not asked again. The summary gives each
model's accuracy with a 95% interval (Wilson, or a percentile bootstrap) and the paired difference of every model
against the first on the questions both answered (paired bootstrap).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stratagem.concurrency import map_concurrent
from stratagem.files import Journal
from stratagem.games.core import Observation
from stratagem.games.metrics import wilson_interval
from stratagem.integrations.autogen_teams import AutoGenConfig, AutoGenSystem
from stratagem.integrations.benchmarks import Question, extract_answer, is_correct, task_text
from stratagem.integrations.debate import ChatConfig, DuConfig, DuDebate, MADConfig, MADDebate, Solution, make_llm
from stratagem.integrations.maslab import MASLabAutoGen, MASLabMAD, load_prompts

SYSTEMS = ("single", "autogen", "mad", "debate")
CI_METHODS = ("wilson", "bootstrap")


class SingleAgent:
    """The baseline: one completion per question."""

    def __init__(self, chat: ChatConfig):
        self.chat = chat

    async def solve(self, q: Question) -> Solution:
        llm = make_llm(self.chat)
        prompt = task_text(q)
        try:
            reply = await llm.act(Observation(game="mas", seat=0, role="solver", phase="answer",
                                              messages=[{"role": "user", "content": prompt}], legal_actions=[]))
        finally:
            await llm.aclose()
        transcript = [{"agent": "user", "round": 0, "role": "user", "content": prompt},
                      {"agent": "solver", "round": 0, "role": "assistant", "content": reply.text,
                       "finish_reason": reply.finish_reason}]
        return Solution(prediction=extract_answer(reply.text, q.kind, q.letters), final_text=reply.text, transcript=transcript,
                        calls=1)


@dataclass
class EvalConfig:
    system: str = field(default="single", metadata={"help": f"System: {', '.join(SYSTEMS)}."})
    protocol: str = field(default="stratagem", metadata={"help": "stratagem: this project's MAD and AutoGen; "
                          "maslab: MASLab's structure (integrations/maslab.py), as MARSHAL evaluated; single and "
                          "debate are the same in both.", "choices": ("stratagem", "maslab")})
    prompts: str | None = field(default=None, metadata={"help": "maslab: a YAML file of its prompts (the keys of "
                                "integrations/prompts/maslab.yaml) instead of the shipped ones."})
    models: list[str] = field(default_factory=lambda: ["base"], metadata={"help": "Served model / adapter names; "
                              "the first is the reference of the paired differences."})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible endpoint."})
    out: str | None = field(default=None, metadata={"help": "Directory for per-question JSONL (None: keep nothing)."})
    concurrency: int = field(default=8, metadata={"help": "Questions in flight at once, over all models."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    max_tokens: int = field(default=256, metadata={"help": "Longest reply of one agent turn."})
    seed: int = field(default=0, metadata={"help": "Sampling seed base and bootstrap seed."})
    rounds: int | None = field(default=None, metadata={"help": "Debate rounds (mad: most rounds, default 3; debate: "
                               "revision rounds, default 2; autogen round_robin: rounds, default 1)."})
    agents: int = field(default=3, metadata={"help": "debate: agents; autogen round_robin/selector: solvers."})
    team: str = field(default="two_agent", metadata={"help": "autogen team: two_agent, round_robin, selector."})
    ci: str = field(default="wilson", metadata={"help": f"Interval of the accuracy: {', '.join(CI_METHODS)}."})
    bootstrap_samples: int = field(default=2000, metadata={"help": "Resamples of the bootstrap intervals."})
    repeats: int = field(default=1, metadata={"help": "Times each question is answered (sampling seed + r for "
                         "repeat r); the accuracy is then the mean over repeats and questions, its interval a "
                         "bootstrap over questions of their mean over repeats.", "min": 1})


def make_system(config: EvalConfig, model: str, repeat: int = 0) -> Any:
    """The system named by `config.system`, serving `model`, sampling with seed config.seed + repeat; it has
    `async solve(question) -> Solution`."""
    chat = ChatConfig(base_url=config.base_url, model=model, temperature=config.temperature,
                      max_tokens=config.max_tokens, seed=config.seed + repeat)
    if config.system == "single":
        return SingleAgent(chat)
    if config.protocol == "maslab" and config.system in ("mad", "autogen"):
        prompts = load_prompts(config.prompts)
        if config.system == "mad":
            return MASLabMAD(chat, rounds=config.rounds or 3, prompts=prompts)
        return MASLabAutoGen(chat, max_turns=config.rounds or 3, prompts=prompts)
    if config.system == "mad":
        return MADDebate(MADConfig(chat=chat, rounds=config.rounds or 3))
    if config.system == "debate":
        return DuDebate(DuConfig(chat=chat, agents=config.agents, rounds=2 if config.rounds is None else config.rounds))
    if config.system == "autogen":
        return AutoGenSystem(AutoGenConfig(chat=chat, team=config.team, solvers=config.agents,
                                           rounds=config.rounds or 1))
    raise ValueError(f"unknown system {config.system!r}; expected one of {', '.join(SYSTEMS)}")


# ---- intervals ---------------------------------------------------------------------------------------------------

def bootstrap_interval(values: list[float], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean of `values`."""
    if not values:
        return 0.0, 1.0
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * (samples - 1))], means[int(math.ceil(0.975 * (samples - 1)))]


def paired_difference(ref: dict[str, float], other: dict[str, float], samples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """Mean of (other - ref) over the questions both answered (each a 0/1, or a mean over repeats), with a
    paired-bootstrap 95% interval."""
    common = sorted(set(ref) & set(other))
    diffs = [float(other[i]) - float(ref[i]) for i in common]
    lo, hi = bootstrap_interval(diffs, samples, seed)
    return {"n": len(common), "diff": sum(diffs) / len(diffs) if diffs else 0.0, "ci95": [lo, hi]}


# ---- the run -----------------------------------------------------------------------------------------------------

def results_path(out: str | Path, model: str) -> Path:
    return Path(out) / f"{model.replace('/', '_')}.jsonl"


def load_done(path: Path) -> dict[str, dict[str, Any]]:
    """Records already finished without error, by question id (a torn last line from a kill is cut; committed
    records that changed are a StoreDamage error)."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for rec in Journal(path).records():  # verified against its commit record; a torn tail is cut
            if not rec.get("error"):
                done[str(rec["id"])] = rec
    return done


def record_id(q: Question, repeat: int) -> str:
    """A record's id: the question's, with @r for a repeat r >= 1 (so a run with one repeat keeps plain ids)."""
    return q.id if repeat == 0 else f"{q.id}@{repeat}"


async def _answer(system: Any, q: Question, model: str, config: EvalConfig, repeat: int = 0) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": record_id(q, repeat), "question": q.id, "repeat": repeat,
                           "benchmark": q.benchmark, "model": model, "system": config.system, "gold": q.gold}
    try:
        sol = await system.solve(q)
    except Exception as e:  # an endpoint failure is recorded and retried on resume, not fatal to the run
        rec.update(prediction=None, correct=False, error=f"{type(e).__name__}: {e}", transcript=[], calls=0)
        return rec
    rec.update(prediction=sol.prediction, correct=is_correct(sol.prediction, q.gold, q.kind), error=None,
               calls=sol.calls, final_text=sol.final_text, meta=sol.meta, transcript=sol.transcript)
    return rec


async def run_eval(config: EvalConfig, questions: list[Question],
                   on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Answer every question with every model (skipping what `config.out` already holds) and summarize."""
    if config.system not in SYSTEMS:
        raise ValueError(f"unknown system {config.system!r}; expected one of {', '.join(SYSTEMS)}")
    if config.ci not in CI_METHODS:
        raise ValueError(f"unknown interval {config.ci!r}; expected one of {', '.join(CI_METHODS)}")
    if not config.models or len(set(config.models)) != len(config.models):
        raise ValueError(f"EvalConfig.models must name distinct served models, got {config.models}")
    if config.protocol not in ("stratagem", "maslab"):
        raise ValueError(f"unknown protocol {config.protocol!r}; expected stratagem or maslab")
    if config.repeats < 1:
        raise ValueError(f"EvalConfig.repeats must be >= 1, got {config.repeats}")
    records: dict[str, dict[str, dict[str, Any]]] = {}
    todo: list[tuple[str, Question, int]] = []
    jobs = [(q, r) for r in range(config.repeats) for q in questions]
    for model in config.models:
        done = load_done(results_path(config.out, model)) if config.out else {}
        records[model] = {record_id(q, r): done[record_id(q, r)] for q, r in jobs if record_id(q, r) in done}
        todo += [(model, q, r) for q, r in jobs if record_id(q, r) not in done]
    if config.out:
        Path(config.out).mkdir(parents=True, exist_ok=True)
    systems = {(m, r): make_system(config, m, r) for m in config.models for r in range(config.repeats)}

    async def one(job: tuple[str, Question, int]) -> dict[str, Any]:
        model, q, r = job
        return await _answer(systems[model, r], q, model, config, r)

    journals = {m: Journal(results_path(config.out, m)).open() for m in config.models} if config.out else {}

    def record(rec: dict[str, Any]) -> None:
        records[rec["model"]][rec["id"]] = rec
        if config.out:
            journals[rec["model"]].append(json.dumps(rec))
        if on_result:
            on_result(rec)

    await map_concurrent(one, todo, max(1, config.concurrency), on_result=record)
    ids = [record_id(q, r) for q, r in jobs]
    return summarize(config, {m: [records[m][i] for i in ids if i in records[m]] for m in config.models},
                     resumed=len(jobs) * len(config.models) - len(todo))


def per_question(recs: list[dict[str, Any]]) -> dict[str, float]:
    """Each question's mean correctness over its repeats (a record without `question` is its own question)."""
    groups: dict[str, list[float]] = {}
    for r in recs:
        groups.setdefault(str(r.get("question", r["id"])), []).append(float(bool(r["correct"])))
    return {q: sum(v) / len(v) for q, v in groups.items()}


def summarize(config: EvalConfig, records: dict[str, list[dict[str, Any]]], resumed: int = 0) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for model, recs in records.items():
        correct = [float(bool(r["correct"])) for r in recs]
        k, n = int(sum(correct)), len(correct)
        means = per_question(recs)
        if config.repeats > 1:  # repeats of one question are not independent: resample questions
            lo, hi = bootstrap_interval(list(means.values()), config.bootstrap_samples, config.seed)
        else:
            lo, hi = (wilson_interval(k, n) if config.ci == "wilson"
                      else bootstrap_interval(correct, config.bootstrap_samples, config.seed))
        models[model] = {"n": n, "questions": len(means), "repeats": config.repeats, "correct": k,
                         "cut_off_replies": sum(int((r.get("meta") or {}).get("cut_off") or 0) for r in recs),
                         "accuracy": k / n if n else 0.0, "ci95": [lo, hi],
                         "errors": sum(1 for r in recs if r.get("error")),
                         "calls": sum(int(r.get("calls") or 0) for r in recs)}
    ref = config.models[0]
    ref_means = per_question(records[ref])
    paired = {m: paired_difference(ref_means, per_question(records[m]), config.bootstrap_samples, config.seed)
              for m in config.models[1:]}
    cfg = {k: v for k, v in asdict(config).items() if k not in ("base_url",)}
    return {"system": config.system, "config": cfg, "models": models, "reference": ref,
            "paired_difference": paired, "resumed": resumed}


def summary_table(summary: dict[str, Any]) -> Any:
    """A rich table: one row per model, accuracy, interval and the difference against the reference."""
    from rich.table import Table

    t = Table(title=f"{summary['system']}: accuracy (95% CI)")
    for col in ("model", "n", "accuracy", "95% CI", f"diff vs {summary['reference']} (95% CI)", "errors"):
        t.add_column(col)
    for model, m in summary["models"].items():
        d = summary["paired_difference"].get(model)
        diff = f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (n={d['n']})" if d else "-"
        t.add_row(model, str(m["n"]), f"{m['accuracy']:.3f}", f"[{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]", diff,
                  str(m["errors"]))
    return t
