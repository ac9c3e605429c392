"""The PPO ratio at the first step of an update, on a run's first-iteration episodes (sampled by the base model):
the trainer's log-probs of the sampled tokens against (a) the log-probs the endpoint reported when sampling
(`ppo.old_logprobs: endpoint`) and (b) the trainer's own recomputation (`trainer`, the default). vLLM reports raw
(temperature-1) log-probs, so both sides are scored at temperature 1 here, whatever the run sampled at. Prints one
JSON object: the fraction of tokens whose ratio lies outside [1 - eps, 1 + eps], and the mean |log ratio|."""

from __future__ import annotations

import argparse
import json
import math


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", help="A run directory of `stratagem train` (its iteration-1 episodes are used).")
    ap.add_argument("--dtype", default="auto", help="Trainer dtype (auto: bfloat16 where the CPU computes it).")
    ap.add_argument("--clip-eps", type=float, default=0.2)
    a = ap.parse_args()

    import torch

    from stratagem.models import resolve
    from stratagem.training.loop import RunConfig
    from stratagem.training.run_store import RunStore
    from stratagem.training.samples import build_batch
    from stratagem.training.trainer import LoRATrainer, TrainerConfig

    store = RunStore(a.run)
    raw = store.read_config()
    cfg = RunConfig.from_dict({k: raw[k] for k in ("trainer",) if k in raw})
    cfg.loop.model = raw.get("loop", {}).get("model", cfg.loop.model)
    episodes = [e for e in store.episodes() if e.iteration == 1]
    batch = build_batch(episodes, lambda i, j: episodes[i].turns[j].logprobs is not None)
    trainer = LoRATrainer(str(resolve(cfg.loop.model)), TrainerConfig(dtype=a.dtype, rank=cfg.trainer.rank,
                                                                      target_modules=cfg.trainer.target_modules))
    groups = trainer.mini_batches(len(batch.samples))
    own = torch.cat([x.float() for x in trainer.score(batch.samples, groups=groups)])  # the update's old log-probs
    again = []  # what the first training step computes: the same micro-batches, now in train mode
    trainer.model.train()
    with torch.no_grad():
        for g in groups:
            for mb in trainer.micro_batches(batch.samples, g):
                again += list(zip(mb, trainer.token_logprobs([batch.samples[i] for i in mb])))
    new = torch.cat([lp.float() for _, lp in sorted(again, key=lambda x: x[0])])
    endpoint = torch.tensor([x for s in batch.samples for x in s.old_logprobs])

    def outside(old: torch.Tensor) -> dict:
        ok = ~torch.isnan(old)
        r = torch.exp(new[ok] - old[ok])
        return {"tokens": int(ok.sum()), "outside_clip_frac": round(float(((r < 1 - a.clip_eps) |
                                                                          (r > 1 + a.clip_eps)).float().mean()), 5),
                "mean_abs_log_ratio": round(float((new[ok] - old[ok]).abs().mean()), 5)}

    print(json.dumps({"benchmark": "first_step_ratio", "run": a.run, "episodes": len(episodes),
                      "trainer_dtype": str(trainer.dtype).replace("torch.", ""), "clip_eps": a.clip_eps,
                      "endpoint_old_logprobs": outside(endpoint), "trainer_old_logprobs": outside(own),
                      "endpoint_logprobs_missing": int(torch.isnan(endpoint).sum()),
                      "nan_check": not math.isnan(float(new.sum()))}))


if __name__ == "__main__":
    main()
