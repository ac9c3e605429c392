"""Data-parallel LoRA updates over N processes, launched by `torchrun` or `accelerate launch`.

Every process holds the whole model and the same LoRA adapter. One update is split like this:

- rollouts: rank 0 plays the iteration's games (on one or many endpoints) and broadcasts the episodes; every rank
  then builds the same batch (build_batch is deterministic), so no rank needs a server;
- samples: the sample indices of each optimizer step are dealt over the ranks (`shard`, longest first, round
  robin, so every rank gets about the same number of tokens); the loss weights stay those of the full batch (the
  nested means of losses.nested_mean_weights are computed over all acts), so the per-rank losses add up to the
  single-process loss;
- gradients: summed over the ranks (one all-reduce of a flat buffer) just before clipping and the optimizer step,
  so every rank takes the identical step the single process would take;
- saving: rank 0 writes the adapter, optimizer state and metrics; the others wait at a barrier.

The process group is set up by accelerate's `PartialState` (the same code under `torchrun` and `accelerate
launch`, on one node or several): gloo on a CPU, NCCL on GPUs, one GPU per process (`cuda:LOCAL_RANK`). Without
a launcher (WORLD_SIZE unset or 1) nothing is initialized and every collective is a no-op.

Sharding the weights (FSDP) is a different trade: see `DistributedConfig.strategy`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")
STRATEGIES = ("ddp",)  # a tuple: the choices of DistributedConfig.strategy


@dataclass
class DistributedConfig:
    strategy: str = field(default="ddp", metadata={"help": "How N processes share an update. ddp: every process "
                          "holds the whole base model (bf16) and adapter, samples are sharded and LoRA gradients "
                          "all-reduced; right whenever the base weights plus one micro-batch of activations fit one "
                          "GPU (up to about 20B parameters in bf16 on 80 GB: the optimizer state of a LoRA adapter "
                          "is small). Models whose weights do not fit one GPU need the weights themselves sharded "
                          "(FSDP, torch's fully_shard per decoder layer): not supported by this trainer yet.",
                          "choices": STRATEGIES})
    cpu: bool = field(default=False, metadata={"help": "Force the CPU and the gloo backend even where a GPU exists."})
    timeout_minutes: float = field(default=180.0, metadata={"help": "How long a rank waits in a collective: the "
                                   "other ranks wait for rank 0's whole rollout (and server start), so this is far "
                                   "above torch's default.", "min": 1.0})


class Distributed:
    """This process's place in the group, and the few collectives the trainer and the loop need."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # ---- sharding ----------------------------------------------------------------------------------------------
    def shard(self, indices: Sequence[int], lengths: Sequence[int] | None = None) -> list[int]:
        """This rank's share of `indices` (the same call on every rank gives disjoint shares that cover them all).
        With `lengths` (per index, e.g. tokens of a sample) the indices are dealt longest first, which balances
        tokens; ties keep their order, so every rank computes the same deal."""
        idx = list(indices)
        if not self.enabled:
            return idx
        if lengths is not None:
            idx = sorted(idx, key=lambda i: -lengths[i])
        return sorted(idx[self.rank::self.world_size])

    # ---- collectives -------------------------------------------------------------------------------------------
    def all_reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over all ranks, in place (a parameter without a gradient counts as zero
        and gets the sum). One flat buffer, one all-reduce."""
        if not self.enabled or not params:
            return
        import torch.distributed as dist

        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            chunk = flat[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += n

    def all_reduce_sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each value over the ranks (e.g. the loss and count sums of an update, for its metrics). The ranks may
        hold different keys (a rank whose shard was empty has none): a missing key counts as 0."""
        if not self.enabled:
            return dict(values)
        import torch.distributed as dist

        key_lists: list[Any] = [None] * self.world_size
        dist.all_gather_object(key_lists, sorted(values))
        keys = sorted(set().union(*key_lists))
        if not keys:
            return {}
        t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64,
                         device=self.device if self._backend_needs_device() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.cpu().tolist()))

    def broadcast_params(self, params: Sequence[torch.nn.Parameter], src: int = 0) -> None:
        """Make every rank start from rank `src`'s weights (identical seeds already agree; this makes it certain)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=src)

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank `src`'s `obj` on every rank (pickled; fine for an iteration's episodes)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self.device if self._backend_needs_device() else None)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self._backend_needs_device():
                if self.device is None:
                    raise RuntimeError("Distributed.barrier: the nccl backend needs this rank's CUDA device; none set")
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def _backend_needs_device(self) -> bool:
        import torch.distributed as dist

        return dist.get_backend() == "nccl"


_CURRENT: Distributed | None = None


def launched() -> bool:
    """Whether this process was started by a launcher with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(config: DistributedConfig | None = None) -> Distributed:
    """Join the process group the launcher describes (torchrun / accelerate launch set RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a single process without a launcher gets a trivial group. Idempotent."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    config = config or DistributedConfig()
    if config.strategy not in STRATEGIES:
        raise ValueError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}; got {config.strategy!r}")
    if not launched():
        _CURRENT = Distributed()
        return _CURRENT
    from accelerate import PartialState

    cpu = config.cpu or not torch.cuda.is_available()
    from datetime import timedelta

    state = PartialState(cpu=cpu, timeout=timedelta(minutes=config.timeout_minutes))
    device = torch.device("cpu") if cpu else torch.device("cuda", state.local_process_index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _CURRENT = Distributed(state.process_index, state.num_processes, state.local_process_index, device)
    return _CURRENT


def current() -> Distributed:
    """The group this process is in: initialized on first use when a launcher started it, else a single process."""
    return _CURRENT if _CURRENT is not None else init_distributed()


def shutdown() -> None:
    """Leave the process group (end of a run)."""
    global _CURRENT
    if _CURRENT is not None and _CURRENT.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CURRENT = None
