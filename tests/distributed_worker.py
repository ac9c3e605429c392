"""Run alone (`python distributed_worker.py MODE MODEL OUT`) or under `torchrun --nproc_per_node N` (same
arguments), for tests/test_training_distributed.py to compare:

- MODE step: one LoRA update on a fixed batch. Rank 0 saves the adapter; every rank writes its LoRA weights, the
  update's metrics and the samples it trained on to OUT.
- MODE run: a two-iteration `run_training` in OUT/run with a scripted rollout and server on rank 0; every rank
  writes its LoRA weights to OUT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_fakes import FakeServer, fake_episode, make_fake_rollout  # noqa: E402

from stratagem.training.advantages import AdvantageConfig, get_advantage  # noqa: E402
from stratagem.training.distributed import DistributedConfig, init_distributed, shutdown  # noqa: E402
from stratagem.training.losses import PPOConfig  # noqa: E402
from stratagem.training.samples import build_batch  # noqa: E402
from stratagem.training.trainer import LoRATrainer, TrainerConfig  # noqa: E402


def run(model: str, out: str) -> None:
    from stratagem.training.loop import RunConfig, run_training

    dist = init_distributed(DistributedConfig(cpu=True))
    cfg = RunConfig.from_dict({"loop": {"iterations": 2, "episodes_per_iteration": 4, "model": model},
                               "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 64,
                                           "dtype": "float32"}})
    server = FakeServer() if dist.is_main else None
    run_training(cfg, Path(out) / "run", server=server, rollout=make_fake_rollout([]) if dist.is_main else None,
                 progress=False)
    # every rank's trainer is gone with run_training: read what rank 0 saved and what this rank's optimizer did
    from stratagem.training.run_store import RunStore

    store = RunStore(Path(out) / "run")
    (Path(out) / f"rank{dist.rank}.json").write_text(json.dumps({"world_size": dist.world_size,
                                                                 "iterations": store.completed_iterations()}))
    shutdown()


def main(model: str, out: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed(DistributedConfig(cpu=True))
    out_dir = Path(out)
    episodes = [fake_episode("ttt", seed, "base") for seed in range(6)]
    adv = get_advantage("mars")(episodes, lambda ep, seat: True, AdvantageConfig(), {})
    batch = build_batch(episodes, lambda i, j: adv[i][j] is not None)
    act_adv = [float(adv[a.episode][a.turn]) for a in batch.acts]
    trainer = LoRATrainer(model, TrainerConfig(dtype="float32", rank=4, alpha=8, lr=1e-2, minibatches=2,
                                               micro_batch_tokens=64), seed=0)
    trained: list[int] = []
    scored = trainer.token_logprobs

    def spy(samples, **kw):  # which samples this rank trains on (grad-enabled passes only)
        if torch.is_grad_enabled():
            trained.extend(batch.samples.index(s) for s in samples)
        return scored(samples, **kw)

    trainer.token_logprobs = spy
    stats = trainer.ppo_step(batch, act_adv, PPOConfig())  # metrics summed over the ranks by the trainer
    torch.save({n: p.detach().cpu() for n, p in trainer.lora_parameters().items()}, out_dir / f"rank{dist.rank}.pt")
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps({
        "world_size": dist.world_size, "trained_samples": sorted(trained), "n_samples": len(batch.samples),
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}}))
    if dist.is_main:
        trainer.save_adapter(out_dir / "adapter")
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    {"step": main, "run": run}[sys.argv[1]](sys.argv[2], sys.argv[3])
