"""What exact evaluation of tic-tac-toe costs: the model's table below the fixed openings (`exact_eval.OPENINGS`,
647 decision points), timed against Kuhn poker's 12 information states scored the same way in the same run, and
the whole tree's cost extrapolated from it (`FULL_TREE_POINTS`: 294,778 decision points, one per move sequence,
each prompt extending its parent's). Prints one JSON object.

The trainer scorer (the model loaded here) scores all the points as token trees (`TrainerScorer.score_all`: each
start that prompts share computed once, a few large forwards): that is the prefix reuse the tree allows. `--vllm-points N` also scores the first N
tic-tac-toe points (and Kuhn) through a vLLM server started here, one request per legal action as
`eval exact --source vllm` sends them.

Mini Hanabi's tree is estimated, not walked (`--hanabi-paths`: Knuth's estimator, `estimate_tree_points`): its
decision histories, chance draws included, and from them a lower bound on its prompts. A seat's prompt shows all but
its own hand, and every card that leaves a hand is shown, so histories with one prompt differ only in the identities
of the seat's own held cards: at most (colors x ranks) ** hand_size of them (4 ** 3 = 64).

    python benchmarks/exact_tree.py [--vllm-points 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import ReplyFormat
from stratagem.integrations.exact_eval import (
    FULL_TREE_POINTS,
    OPENINGS,
    TrainerScorer,
    VLLMScorer,
    decision_points,
    estimate_tree_points,
    policy_table,
    tree_metrics,
)
from stratagem.models import resolve


async def _score(points: dict, scorer, fmt: ReplyFormat, stop: list[str]) -> tuple[float, int, object]:
    before = scorer.requests
    t0 = time.perf_counter()
    table = await policy_table("", points, scorer, fmt, stop)
    return time.perf_counter() - t0, scorer.requests - before, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--vllm-points", type=int, default=0, help="Also score this many tic-tac-toe points (and Kuhn) "
                   "through a vLLM server started here; 0: trainer only.")
    p.add_argument("--hanabi-paths", type=int, default=20000, help="Random paths for mini Hanabi's tree estimate.")
    args = p.parse_args()
    sampling, fmt = SamplingConfig(), ReplyFormat()
    stop = list(sampling.stop)
    t0 = time.perf_counter()
    ttt = decision_points("tictactoe", fmt, stop)
    build_s = time.perf_counter() - t0
    kuhn = decision_points("kuhn_poker", fmt, stop)
    out: dict = {"model": args.model, "openings": [list(o) for o in OPENINGS["tictactoe"]],
                 "points_below_openings": len(ttt), "points_whole_tree": FULL_TREE_POINTS["tictactoe"],
                 "build_points_s": round(build_s, 2)}

    scorer = TrainerScorer.from_pretrained(resolve(args.model), None, sampling)
    k_s, k_req, _ = asyncio.run(_score(kuhn, scorer, fmt, stop))
    t_s, t_req, table = asyncio.run(_score(ttt, scorer, fmt, stop))
    per_point = t_s / len(ttt)
    out["trainer"] = {
        "kuhn_s_per_point": round(k_s / len(kuhn), 3), "tictactoe_s_per_point": round(per_point, 3),
        "tictactoe_over_kuhn_per_point": round(per_point / (k_s / len(kuhn)), 3),
        "forward_passes_per_point": {"kuhn": round(k_req / len(kuhn), 2), "tictactoe": round(t_req / len(ttt), 2)},
        "below_openings_s": round(t_s, 1),
        "whole_tree_hours_extrapolated": round(per_point * FULL_TREE_POINTS["tictactoe"] / 3600, 1)}
    table.game = "tictactoe"
    out["metrics_below_openings"] = tree_metrics("tictactoe", table)

    if args.hanabi_paths:
        from stratagem.games.strategic.hanabi import MiniHanabi

        est = estimate_tree_points("mini_hanabi", args.hanabi_paths)
        hp = MiniHanabi.default_params
        fiber = (hp["colors"] * hp["ranks"]) ** hp["hand_size"]
        out["mini_hanabi"] = {"decision_histories": round(est["mean"]), "stderr": round(est["stderr"]),
                              "paths": est["paths"], "histories_per_prompt_at_most": fiber,
                              "prompts_at_least": round(est["mean"] / fiber),
                              "trainer_hours_at_least": round(est["mean"] / fiber * per_point / 3600, 1)}

    if args.vllm_points:
        from stratagem.integrations.vllm_server import VLLMServer

        subset = dict(list(ttt.items())[: args.vllm_points])
        with VLLMServer(model=resolve(args.model)) as srv:
            async def both() -> tuple:
                v = VLLMScorer(srv.base_url, "base", sampling)
                try:
                    return (await _score(kuhn, v, fmt, stop))[:2], (await _score(subset, v, fmt, stop))[:2]
                finally:
                    await v.aclose()

            (vk_s, vk_req), (vt_s, vt_req) = asyncio.run(both())
        v_point = vt_s / len(subset)
        out["vllm"] = {"points_scored": len(subset), "kuhn_s_per_point": round(vk_s / len(kuhn), 3),
                       "tictactoe_s_per_point": round(v_point, 3),
                       "tictactoe_over_kuhn_per_point": round(v_point / (vk_s / len(kuhn)), 3),
                       "requests_per_point": round(vt_req / len(subset), 2),
                       "vllm_over_trainer_per_point": round(v_point / per_point, 2),
                       "whole_tree_hours_extrapolated": round(v_point * FULL_TREE_POINTS["tictactoe"] / 3600, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
