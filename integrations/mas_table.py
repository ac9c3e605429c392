"""The downstream table as MARSHAL lays out its Table 1: one block per multi-agent system, a row per model, a column
per benchmark (GSM8K, MATH-500, AQUA-RAT, AIME24, AMC23, GPQA-Diamond, MMLU-STEM) and the average; each model after
the first (the base) with its difference from it and a paired 95% interval.

Each (system, benchmark) pair is one `run_eval` into OUT/SYSTEM/BENCHMARK/ (resumable per question like any `eval
mas`). The average's difference is the mean of the per-benchmark differences; its interval resamples the questions
of every benchmark independently (a stratified paired bootstrap), so a small benchmark (AIME's 30) weighs as much
as the paper's unweighted average gives it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import yaml

from stratagem.files import atomic_write
from stratagem.integrations.benchmarks import Question
from stratagem.integrations.mas_eval import EvalConfig, load_done, per_question, results_path, run_eval

TABLE_BENCHMARKS = ("gsm8k", "math500", "aqua", "aime", "amc", "gpqa", "mmlu_stem")
TITLES = {"gsm8k": "GSM8K", "math500": "MATH500", "aqua": "AQUA", "aime": "AIME24", "amc": "AMC23",
          "gpqa": "GPQA-D", "mmlu_stem": "MMLU-STEM"}
REFERENCES = {"marshal": Path(__file__).parent / "references" / "marshal.yaml"}


def load_reference(name_or_path: str) -> dict[str, Any]:
    """A published table to print beside ours: `marshal` (the cells of MARSHAL's Table 1 its public sources state)
    or a YAML file of the same shape (`source`, `rows`, `systems: {system: {row: {benchmark: % or null}}}`)."""

    path = REFERENCES.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"--reference expects {' or '.join(REFERENCES)} or a YAML file, got {name_or_path!r}")
    data = yaml.safe_load(path.read_text()) or {}
    rows, systems = data.get("rows"), data.get("systems")
    if not isinstance(rows, list) or not rows or not isinstance(systems, dict) or not data.get("source"):
        raise ValueError(f"{path}: a reference table needs `source`, a non-empty `rows` list and `systems`")
    known = {*TABLE_BENCHMARKS, "average"}
    for system, block in systems.items():
        if not isinstance(block, dict) or set(block) != set(rows):
            raise ValueError(f"{path}: systems.{system} must give exactly the rows {rows}")
        for row, cells in block.items():
            bad = [k for k, v in (cells or {}).items()
                   if k not in known or not (v is None or isinstance(v, (int, float)))]
            if bad or not cells:
                raise ValueError(f"{path}: systems.{system}.{row}: {bad or 'no cells'}: each cell is one of "
                                 f"{', '.join(sorted(known))} with a percentage or null")
    return {"source": data["source"], "rows": rows, "systems": systems, "name": name_or_path}


def average_difference(pairs: list[tuple[dict[str, float], dict[str, float]]], samples: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """Mean over benchmarks of (other - ref) accuracy on the questions both answered, with a stratified paired
    bootstrap 95% interval (each benchmark's questions resampled on their own, the means averaged)."""
    diffs = []
    for ref, other in pairs:
        common = sorted(set(ref) & set(other))
        diffs.append([other[q] - ref[q] for q in common])
    diffs = [d for d in diffs if d]
    if not diffs:
        return {"diff": 0.0, "ci95": [0.0, 0.0], "benchmarks": 0}
    point = sum(sum(d) / len(d) for d in diffs) / len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for d in diffs) / len(diffs)
                   for _ in range(samples))
    return {"diff": point, "ci95": [means[int(0.025 * (samples - 1))], means[int(math.ceil(0.975 * (samples - 1)))]],
            "benchmarks": len(diffs)}


async def run_table(base: EvalConfig, systems: list[str], questions: dict[str, list[Question]],
                    out: str | Path, on_result: Any = None) -> dict[str, Any]:
    """Every (system, benchmark) of the table for every model of `base`; returns {"systems": {system: {"models":
    {model: {benchmark: accuracy, ..., "average": mean}}, "diff": {model: {benchmark: paired, "average": ...}}}}}
    and writes it to OUT/table.json."""
    out = Path(out)
    result: dict[str, Any] = {"models": list(base.models), "benchmarks": list(questions), "systems": {},
                              "protocol": base.protocol, "config": {k: v for k, v in dataclasses.asdict(base).items()
                                                                    if k not in ("base_url", "out", "system")}}
    ref = base.models[0]
    for system in systems:
        block: dict[str, Any] = {"models": {m: {} for m in base.models}, "diff": {m: {} for m in base.models[1:]},
                                 "n": {}}
        means: dict[str, dict[str, dict[str, float]]] = {m: {} for m in base.models}
        for bench, qs in questions.items():
            bench_out = str(out / system / bench)
            cfg = dataclasses.replace(base, system=system, out=bench_out)
            summary = await run_eval(cfg, qs, on_result=on_result)
            for m in base.models:
                block["models"][m][bench] = summary["models"][m]["accuracy"]
            for m in base.models[1:]:
                block["diff"][m][bench] = summary["paired_difference"][m]
            block["n"][bench] = len(qs)
            ids = {q.id for q in qs}
            for m in base.models:
                done = load_done(results_path(bench_out, m)).values()  # this run's records, errors left out
                means[m][bench] = per_question([r for r in done if str(r.get("question", r["id"])) in ids])
        for m in base.models:
            accs = list(block["models"][m].values())
            block["models"][m]["average"] = sum(accs) / len(accs) if accs else 0.0
        for m in base.models[1:]:
            block["diff"][m]["average"] = average_difference([(means[ref][b], means[m][b]) for b in questions],
                                                             base.bootstrap_samples, base.seed)
        result["systems"][system] = block
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "table.json", json.dumps(result, indent=2))
    return result


def _reference_rows(system: str, benches: list[str], reference: dict[str, Any]) -> list[str]:
    """The published rows of one system (as printed, n/a where the file has no number) and each later row's
    difference from the first where both cells are given."""
    block = reference["systems"].get(system)
    if block is None:
        return []

    def cell(v: Any, sign: str = "") -> str:
        return "n/a" if v is None else f"{v:{sign}.2f}"

    rows, first = reference["rows"], block[reference["rows"][0]]
    lines = []
    for row in rows:
        cells = block[row]
        lines.append(f"| {system} | {row} (paper) | " + " | ".join(cell(cells.get(b)) for b in [*benches, "average"])
                     + " |")
        if row != rows[0]:
            diff = [None if cells.get(b) is None or first.get(b) is None else cells[b] - first[b]
                    for b in [*benches, "average"]]
            lines.append(f"| {system} | {row} - {rows[0]} (paper) | " + " | ".join(cell(d, "+") for d in diff) + " |")
    return lines


def table_markdown(result: dict[str, Any], reference: dict[str, Any] | None = None) -> str:
    """Markdown laid out like MARSHAL's Table 1 (accuracy in %, one block per system); under each trained model a
    row of its differences from the base with their 95% intervals; with `reference`, the published rows of each
    system after ours (the paper's average is over its seven benchmarks, whichever columns this table has)."""
    benches = result["benchmarks"]
    head = "| MAS | model | " + " | ".join(TITLES.get(b, b) for b in benches) + " | Avg. |"
    lines = [head, "|" + "---|" * (len(benches) + 3)]
    ref = result["models"][0]
    for system, block in result["systems"].items():
        for m in result["models"]:
            acc = block["models"][m]
            lines.append(f"| {system} | {m} | " + " | ".join(f"{100 * acc[b]:.1f}" for b in benches) +
                         f" | {100 * acc['average']:.1f} |")
            if m != ref:
                d = block["diff"][m]
                lines.append(f"| {system} | {m} - {ref} | " + " | ".join(
                    f"{100 * d[b]['diff']:+.1f} [{100 * d[b]['ci95'][0]:+.1f}, {100 * d[b]['ci95'][1]:+.1f}]"
                    for b in [*benches, "average"]) + " |")
        if reference:
            lines.extend(_reference_rows(system, benches, reference))
    if reference:
        lines.append(f"\n(paper): {reference['source']}; n/a: no number in the reference {reference['name']!r}")
    return "\n".join(lines)
