"""MIRAGE end to end on the default model: one full game of each script of a MIRAGE `dataset/<language>` folder
through `play_mystery` (what `stratagem play mystery` runs), every seat and the judge served by the same model, with
bounded conversation rounds. Prints one JSON object: per script the wall time, acts, failed-action rate, judge
parse failures, the MIRAGE metrics and the longest act in tokens (prompt + reply, to compare with the server's
context), and the failed-action rate over all acts.

    python benchmarks/mirage.py --data path/to/MIRAGE/dataset/En [--rounds 1] [--base-url URL]
        [--summary-tokens 1500] [--no-structured-outputs] [--protocol mirage|stratagem] [--max-model-len 8192]

The endpoint is --base-url, else $STRATAGEM_BASE_URL, else a vLLM server with the default model is started.
With --summary-tokens each character's script is summarised by the model to that budget before play (cached).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from stratagem.games.core import read_jsonl
from stratagem.games.mystery.cli import play_mystery
from stratagem.games.mystery.schema import is_script_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="A MIRAGE dataset/<language> folder (script folders + Truth.json).")
    ap.add_argument("--rounds", type=int, default=1, help="Conversation rounds per stage.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-url", default=os.environ.get("STRATAGEM_BASE_URL"))
    ap.add_argument("--summary-tokens", type=int, default=None, help="Model summaries of this many tokens.")
    ap.add_argument("--no-structured-outputs", action="store_true")
    ap.add_argument("--protocol", default="mirage", choices=("mirage", "stratagem"),
                    help="mirage: MIRAGE's game and judges (MysteryConfig.mirage); stratagem: the compact one.")
    ap.add_argument("--max-model-len", type=int, default=8192,
                    help="Context of the server this starts: the mirage protocol's player prompt (a 3,000-token "
                         "script, a 1,500-token history, 4 x 512 reply tokens) needs about 6,800.")
    ap.add_argument("--out", default="runs/mirage-benchmark", help="Folder of the transcripts and episodes.")
    ap.add_argument("--only", default="", help="Comma-separated script folder names (default: all).")
    args = ap.parse_args()
    folders = sorted(p for p in Path(args.data).iterdir() if is_script_dir(p))
    if args.only:
        folders = [f for f in folders if f.name in args.only.split(",")]
    server: contextlib.AbstractContextManager = contextlib.nullcontext()
    if not args.base_url:
        from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

        server = VLLMServer(ServerConfig(model="default", max_model_len=args.max_model_len))
    per_script = {}
    acts = failed = 0
    t0 = time.perf_counter()
    with server as srv:
        url = args.base_url or srv.base_url
        for f in folders:
            out = Path(args.out) / f"{f.name.replace(' ', '_')}.md"
            try:
                with contextlib.redirect_stdout(sys.stderr):  # one JSON object on stdout: ours
                    r = play_mystery(str(f), players="base", judge="base", episodes=1, seed=args.seed, json_out=True,
                                     transcript=str(out), rounds=args.rounds, base_url=url, concurrency=1,
                                     structured_outputs=not args.no_structured_outputs,
                                     summary_tokens=args.summary_tokens, protocol=args.protocol)
            except Exception as e:  # noqa: BLE001  a script that fails is reported, the others still run
                per_script[f.name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{f.name}: {e}", file=sys.stderr)
                continue
            m = r["metrics"]
            longest = max((len(t.prompt_token_ids or []) + len(t.completion_token_ids or [])
                           for ep in read_jsonl(r["episodes_path"]) for t in ep.turns), default=0)
            acts += m["acts"]
            failed += m["failed_actions"]
            per_script[f.name] = {"wall_s": r["wall_s"], "longest_act_tokens": longest, **{k: round(m[k], 4) for k in (
                "acts", "failed_actions", "failed_action_rate", "judge_parse_failures", "victory", "tii", "cic",
                "ici", "sci", "overall", "civilians_win")}}
    print(json.dumps({"data": str(args.data), "rounds": args.rounds, "summary_tokens": args.summary_tokens,
                      "structured_outputs": not args.no_structured_outputs, "scripts": per_script,
                      "completed": sum("error" not in v for v in per_script.values()), "of": len(folders),
                      "acts": acts, "failed_action_rate": round(failed / acts, 4) if acts else None,
                      "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
