"""A run's trained turns as a Hugging Face `datasets` dataset: one row per turn the update trained on.

Advantages are not stored in the run (episodes are written before the update computes them), so they are
recomputed here exactly as the loop computed them: each committed iteration's episodes in order through the run's
estimator and its carried state (RAE's baselines), or, for a loss without advantages (MARO), the per-act labels
with the loop's per-iteration seed. Turns left out of the update (a bot's, an opponent seat's, a turn without token
ids) are left out of the dataset too.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stratagem.training.advantages import advantage_names, get_advantage
from stratagem.training.loop import RunConfig, learner_for
from stratagem.training.losses import maro_labels
from stratagem.training.run_store import RunStore
from stratagem.training.samples import has_tokens


def trained_rows(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    store = RunStore(run_dir)
    store.verify()  # a damaged store is reported, never half-exported
    cfg = RunConfig.from_dict(store.read_config())
    lc = cfg.loop
    learner = learner_for(lc)
    by_iteration: dict[int, list] = {}
    for ep in store.episodes():
        by_iteration.setdefault(int(ep.iteration or 0), []).append(ep)
    adv_state: dict[str, Any] = {}
    for k in sorted(by_iteration):
        episodes = by_iteration[k]
        if lc.algo in advantage_names():
            adv = get_advantage(lc.algo)(episodes, learner, cfg.advantage, adv_state)
            labels = None
        else:
            adv = None
            labels = maro_labels(episodes, learner, cfg.maro, random.Random(lc.seed * 1_000_003 + k))
        for i, ep in enumerate(episodes):
            for j, t in enumerate(ep.turns):
                a = adv[i][j] if adv is not None else None
                label = labels.get((i, j)) if labels is not None else None
                if not has_tokens(t) or (a is None and label is None):
                    continue
                yield {"run_iteration": k, "episode_id": ep.id, "game": ep.game, "seed": ep.seed, "seat": t.seat,
                       "role": t.role, "phase": t.phase, "messages": [dict(m) for m in t.messages],
                       "response": t.response, "action": t.action, "illegal_reason": t.illegal_reason,
                       "reward": float(t.reward), "return": float(ep.returns[t.seat]) if t.seat < len(ep.returns)
                       else None, "advantage": None if a is None else float(a),
                       "desirable": label, "adapter": t.adapter,
                       "prompt_token_ids": list(t.prompt_token_ids or []),
                       "completion_token_ids": list(t.completion_token_ids or []),
                       "logprobs": list(t.logprobs) if t.logprobs is not None else None}


def export_run(run_dir: str | Path, to: str | Path) -> int:
    """Write the dataset to `to` (datasets.save_to_disk; read back with datasets.load_from_disk); the row count."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("stratagem export needs the `datasets` package: pip install 'stratagem[export]'") \
            from None
    rows = list(trained_rows(run_dir))
    if not rows:
        raise ValueError(f"{run_dir}: no committed iteration has a trained turn to export")
    datasets.Dataset.from_list(rows).save_to_disk(str(to))
    return len(rows)
