"""Data-parallel updates: two processes under torchrun (gloo, CPU) take the same step as one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stratagem.training.distributed import Distributed, DistributedConfig, init_distributed

HERE = Path(__file__).resolve().parent
# AdamW with lr 1e-2 moves each LoRA weight by about 1e-2 per step; the two runs differ only in the order of float32
# sums (measured: 3.2e-6), so 1e-4 is 1% of one step
TOLERANCE = 1e-4


def test_shard_deals_longest_first_and_covers_everything():
    lengths = [5, 9, 1, 7, 3]
    r0, r1 = Distributed(0, 2).shard(range(5), lengths), Distributed(1, 2).shard(range(5), lengths)
    # longest first: 1 (9), 3 (7), 0 (5), 4 (3), 2 (1) -> rank 0 gets 1, 0, 2 and rank 1 gets 3, 4
    assert (r0, r1) == ([0, 1, 2], [3, 4])
    assert Distributed(0, 1).shard([4, 2], lengths) == [4, 2]  # one process: everything, untouched


def test_single_process_is_a_no_op():
    d = init_distributed()
    assert not d.enabled and d.is_main and d.device is None
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 2.0])
    d.all_reduce_grads([p])
    assert p.grad.tolist() == [1.0, 2.0] and d.all_reduce_sum({"loss": 3.0}) == {"loss": 3.0}
    with pytest.raises(ValueError, match="distributed.strategy"):
        import stratagem.training.distributed as m

        saved, m._CURRENT = m._CURRENT, None
        try:
            init_distributed(DistributedConfig(strategy="zero3"))
        finally:
            m._CURRENT = saved


def _run(cmd: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _one_and_two_processes(mode: str, model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """distributed_worker.py MODE run once as one process and once under torchrun with two; their output folders."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir()
    multi.mkdir()
    worker = str(HERE / "distributed_worker.py")
    _run([sys.executable, worker, mode, str(model), str(single)], tmp_path)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    # --standalone: a local rendezvous on a free port (parallel test runs do not collide)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", worker, mode, str(model), str(multi)], tmp_path)
    return single, multi


@pytest.mark.slow
def test_two_processes_take_the_single_process_step(tmp_path):
    from training_fakes import tiny_model

    single, multi = _one_and_two_processes("step", tiny_model(tmp_path / "model"), tmp_path)

    one = torch.load(single / "rank0.pt")
    r0, r1 = torch.load(multi / "rank0.pt"), torch.load(multi / "rank1.pt")
    init = {n: (torch.zeros_like(p) if "lora_B" in n else None) for n, p in one.items()}
    # the update moved the adapter (B starts at zero) by far more than the tolerance
    assert max(one[n].abs().max().item() for n in one if "lora_B" in n) > 100 * TOLERANCE
    assert all(torch.equal(r0[n], r1[n]) for n in r0), "the two ranks hold different adapters"
    gap = max((one[n] - r0[n]).abs().max().item() for n in one)
    assert gap < TOLERANCE, f"2-process adapter differs from the 1-process adapter by {gap}"
    assert set(init) == set(r0)

    # the samples were really split (not every rank training on everything, which Adam's scale invariance would hide)
    s, m0, m1 = (json.loads((d / f).read_text()) for d, f in ((single, "rank0.json"), (multi, "rank0.json"),
                                                           (multi, "rank1.json")))
    assert m0["world_size"] == 2 and s["world_size"] == 1
    assert s["trained_samples"] == list(range(s["n_samples"]))
    assert not set(m0["trained_samples"]) & set(m1["trained_samples"])
    assert sorted(m0["trained_samples"] + m1["trained_samples"]) == s["trained_samples"]
    # the gradient norm (before clipping) and the reduced loss match the single process: gradients were summed once
    for key in ("grad_norm", "loss", "clip_frac", "kl", "ratio_mean", "clip_frac_first_step"):
        assert m0["stats"][key] == pytest.approx(s["stats"][key], rel=1e-4, abs=1e-7), key
    # rank 0 saved a loadable peft adapter
    assert (multi / "adapter" / "adapter_config.json").exists() and not (multi / "adapter.tmp").exists()


@pytest.mark.slow
def test_two_process_training_run_matches_one_process(tmp_path):
    """run_training under torchrun: rank 0 rolls out (scripted) and writes the run, rank 1 only joins the updates;
    after two iterations the saved adapter is the one-process run's."""
    from safetensors.torch import load_file
    from training_fakes import tiny_model

    from stratagem.training.run_store import RunStore

    single, multi = _one_and_two_processes("run", tiny_model(tmp_path / "model"), tmp_path)

    one, two = RunStore(single / "run"), RunStore(multi / "run")
    assert one.completed_iterations() == two.completed_iterations() == 2
    assert json.loads((multi / "rank1.json").read_text()) == {"world_size": 2, "iterations": 2}
    assert len(two.metrics()) == 2 and len(list(two.episodes())) == 8  # written once, by rank 0
    a = load_file(str(one.adapter_dir(2) / "adapter_model.safetensors"))
    b = load_file(str(two.adapter_dir(2) / "adapter_model.safetensors"))
    gap = max((a[k] - b[k]).abs().max().item() for k in a)
    assert gap < TOLERANCE, f"after two iterations the 2-process adapter differs by {gap}"
    for m1, m2 in zip(one.metrics(), two.metrics()):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-7)
        assert m2["trained_tokens"] == m1["trained_tokens"]
