"""benchmarks/ablation.py --exact: the seed summary and its table, on hand-made numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation.py"


def _mod():
    spec = importlib.util.spec_from_file_location("bench_ablation", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _games(kuhn_expl, kuhn_cfr, leduc_expl=2.0, leduc_cfr=-1.0):
    return {"exact": {"games": {"kuhn_poker": {"exploitability": kuhn_expl, "vs_cfr": kuhn_cfr},
                                "leduc_poker": {"exploitability": leduc_expl, "vs_cfr": leduc_cfr}}}}


def test_exact_summary_marks_only_differences_the_seed_range_does_not_cover():
    m = _mod()
    result = {"seeds": [0, 1, 2], "models": {
        "base": _games(0.40, -0.10),
        # Kuhn exploitability 0.30..0.35, all below base: marked; vs CFR -0.2..0.0 straddles -0.1: not marked
        "mars": {"seeds": {0: _games(0.30, -0.2), 1: _games(0.35, 0.0), 2: _games(0.33, -0.1)}},
        "grpo": {"seeds": {0: _games(0.41, -0.05, 2.1), 1: _games(0.45, -0.02, 2.2)}},
    }}
    s = m.exact_summary(result)
    k = s["mars"]["kuhn_poker/exploitability"]
    assert k["range"] == [0.30, 0.35] and k["mean"] == round((0.30 + 0.35 + 0.33) / 3, 4) and k["base"] == 0.40
    assert k["exceeds_seed_spread"]
    assert not s["mars"]["kuhn_poker/vs_cfr"]["exceeds_seed_spread"]  # the base's -0.1 is one of the seeds
    assert not s["mars"]["leduc_poker/exploitability"]["exceeds_seed_spread"]  # every seed equals the base
    assert s["grpo"]["kuhn_poker/exploitability"]["exceeds_seed_spread"]  # 0.41..0.45, all above 0.40
    assert s["grpo"]["leduc_poker/exploitability"]["exceeds_seed_spread"]
    result["exact_summary"] = s
    table = m.exact_markdown(result).splitlines()
    assert table[2].startswith("| base model | 0.4000 | -0.1000 | 2.0000 | -1.0000 |")
    assert table[3].startswith("| MARS | 0.3267 [0.3000, 0.3500] * | -0.1000 [-0.2000, 0.0000] |")
    assert table[4].startswith("| GRPO (trajectory-level) | 0.4300 [0.4100, 0.4500] * |")
