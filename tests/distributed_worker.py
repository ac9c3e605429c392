"""One LoRA update on a fixed batch, run alone (`python distributed_worker.py MODEL OUT`) or under
`torchrun --nproc_per_node N` (same arguments). Rank 0 saves the adapter; every rank writes its LoRA weights, the
update's metrics and the samples it trained on to OUT, for tests/test_training_distributed.py to compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_fakes import fake_episode  # noqa: E402

from stratagem.training.advantages import AdvantageConfig, get_advantage  # noqa: E402
from stratagem.training.distributed import DistributedConfig, init_distributed, reduce_update_stats, shutdown  # noqa: E402
from stratagem.training.losses import PPOConfig  # noqa: E402
from stratagem.training.samples import build_batch  # noqa: E402
from stratagem.training.trainer import LoRATrainer, TrainerConfig  # noqa: E402


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

    def spy(samples, *, reference=False):  # which samples this rank trains on (grad-enabled passes only)
        if torch.is_grad_enabled():
            trained.extend(batch.samples.index(s) for s in samples)
        return scored(samples, reference=reference)

    trainer.token_logprobs = spy
    stats = reduce_update_stats(trainer.ppo_step(batch, act_adv, PPOConfig()), dist)
    torch.save({n: p.detach().cpu() for n, p in trainer.lora_parameters().items()}, out_dir / f"rank{dist.rank}.pt")
    (out_dir / f"rank{dist.rank}.json").write_text(json.dumps({
        "world_size": dist.world_size, "trained_samples": sorted(trained), "n_samples": len(batch.samples),
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}}))
    if dist.is_main:
        trainer.save_adapter(out_dir / "adapter")
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
