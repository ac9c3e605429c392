"""MARSHAL's downstream table on a small model, honestly: `stratagem eval mas --protocol maslab --table` for MAD and
AutoGen on the benchmarks whose files are at hand, the models side by side (the first is the base of every
difference). Prints one JSON object: the table (accuracies, paired differences with 95% intervals), its markdown,
the settings and the wall time.

    python benchmarks/mas_table.py --data-dir ../shared/data --limit 5 --max-tokens 256
    python benchmarks/mas_table.py --data-dir DIR --models base,iter-10 --base-url http://127.0.0.1:8000/v1

`--data-dir` is searched for the benchmark files by their usual folders (gsm8k/test.jsonl, aime24/test.jsonl,
amc23/test.jsonl, aqua/test.json, math500/test.jsonl, gpqa/gpqa_diamond.csv, mmlu/test.jsonl); benchmarks without a
file are left out (named in the JSON), never fetched. Questions are MASLab's sample (seed 2024), the first --limit
of it. A server of the default model is started unless --base-url is given. The small default model does not
think and answers few of these questions; that is the number this prints, not the paper's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

FILES = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl", "aqua": "aqua/test.json",
         "aime": "aime24/test.jsonl", "amc": "amc23/test.jsonl", "gpqa": "gpqa/gpqa_diamond.csv",
         "mmlu_stem": "mmlu/test.jsonl"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from stratagem.integrations.benchmarks import load_benchmark
    from stratagem.integrations.mas_eval import EvalConfig
    from stratagem.integrations.mas_table import TABLE_BENCHMARKS, run_table, table_markdown

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="Folder holding the benchmark files (see above).")
    ap.add_argument("--models", default="base", help="Comma-separated served names; the first is the base.")
    ap.add_argument("--systems", default="mad,autogen")
    ap.add_argument("--limit", type=int, default=5, help="Questions per benchmark (of MASLab's sample).")
    ap.add_argument("--max-tokens", type=int, default=2048, help="Reply budget (MASLab: 2048).")
    ap.add_argument("--temperature", type=float, default=0.5, help="Sampling temperature (MASLab: 0.5).")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--base-url", default=None, help="A running server (default: start one).")
    ap.add_argument("--out", default="runs/mas-table", help="Records and table (reruns resume).")
    args = ap.parse_args(argv)

    root = Path(args.data_dir)
    present = {b: root / FILES[b] for b in TABLE_BENCHMARKS if (root / FILES[b]).is_file()}
    questions = {b: load_benchmark(b, p, limit=args.limit, sample="maslab") for b, p in present.items()}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]

    def run(url: str) -> dict[str, Any]:
        cfg = EvalConfig(models=models, base_url=url, concurrency=args.concurrency, temperature=args.temperature,
                         max_tokens=args.max_tokens, protocol="maslab")
        return asyncio.run(run_table(cfg, systems, questions, args.out))

    t0 = time.perf_counter()
    if args.base_url:
        table = run(args.base_url)
    else:
        from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

        with VLLMServer(ServerConfig(model="default")) as srv:
            table = run(srv.base_url)
    out = {"benchmark": "mas_table", "seconds": time.perf_counter() - t0, "limit": args.limit,
           "max_tokens": args.max_tokens, "temperature": args.temperature, "models": models, "systems": systems,
           "benchmarks": list(questions), "missing": [b for b in TABLE_BENCHMARKS if b not in present],
           "table": table, "markdown": table_markdown(table)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
