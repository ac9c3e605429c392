"""benchmarks/gpu.py: the FLOP count on a hand-worked shape, the peak table, and a --tiny run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_token_hand_example():
    g = _module()
    # tiny shape: per layer q 64x64, k 64x32, v 64x32, o 64x64, gate/up/down 64x128 -> 36864; 2 layers + head 256x64
    model = g.build_model(g.TINY, None, "cpu")
    assert g.matmul_params(model) == 2 * 36864 + 16384 == 90112
    assert g.flops_per_token(90112, 0, 2, 128, 64) == 4 * 90112 + 3 * 2 * 2 * 128 * 64 == 458752
    # LoRA weights cost 6 FLOPs each: 32768 rank-16 weights add 196608
    assert g.flops_per_token(90112, 32768, 2, 128, 64) == 458752 + 196608


def test_peak_table():
    g = _module()
    assert g.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert g.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert g.peak_tflops("NVIDIA H200") == 989.0
    assert g.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert g.peak_tflops("Some Future Card") is None


@pytest.mark.slow
def test_tiny_run_prints_positive_finite_numbers():
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--peak-tflops", "1"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"] == "tiny" and out["skipped"] == {}
    train, gen = out["train"], out["generation"]
    assert train["tokens_per_step"] == 2 * 128 and train["lora_params"] == 32768 and train["matmul_params"] == 90112
    for key in ("step_s", "tokens_per_s", "flops_per_token", "achieved_tflops", "mfu", "loss"):
        assert isinstance(train[key], float) and math.isfinite(train[key]) and train[key] > 0, key
    assert train["mfu"] == pytest.approx(train["achieved_tflops"] / 1.0)
    assert train["tokens_per_s"] == pytest.approx(train["tokens_per_step"] / train["step_s"])
    assert gen["engine"] == "transformers" and gen["tokens_per_s"] > 0 and math.isfinite(gen["tokens_per_s"])


def test_forward_flops_hand_example():
    g = _module()
    # rank-32 LoRA on the tiny shape: r = 65536; 2 x 90112 + 2 x 65536 + 2 x 2 x 128 x 64 = 344064
    assert g.forward_flops_per_token(90112, 65536, 2, 128, 64) == 344064


@pytest.mark.slow
def test_preset_marshal_takes_the_trainers_shape_and_counts_three_passes():
    """`--preset marshal`: rank 32 / alpha 32, gradient checkpointing, 8 sequences per optimizer step in
    micro-batches of 2, the old and reference forwards; per token 851968 (training: 4 x 90112 + 6 x 65536 +
    6 x 2 x 128 x 64) + 2 x 344064 (the forwards) = 1540096 FLOPs on the tiny shape."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--preset", "marshal", "--engine", "none",
                        "--peak-tflops", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    t = out["train"]
    assert out["preset"] == "marshal" and out["skipped"] == {"generation": "--engine none"}
    assert (t["lora_rank"], t["lora_alpha"], t["batch"], t["micro_batch"], t["passes"]) == (32, 32, 8, 2, 3)
    assert t["gradient_checkpointing"] and t["lora_params"] == 65536 and t["flops_per_token"] == 1540096
    assert t["tokens_per_step"] == 8 * 128 and math.isfinite(t["loss"]) and t["loss"] > 0
    bad = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--preset", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "shipped: laptop, marshal" in bad.stderr


@pytest.mark.slow
def test_chunked_output_layer_and_packed_documents_on_the_tiny_shape():
    """`--loss chunked` (the default: the output layer a chunk of rows at a time, recomputed in the backward) gives
    the model's own loss over full logits on the same step; `--docs 4` packs four documents per row, each attending
    to itself only (tree attention), which counts a quarter of the row in the attention FLOPs: per token
    4 x 90112 + 6 x 32768 + 6 x 2 x 32 x 64 = 581632 on the tiny shape."""
    def run(*extra: str) -> dict:
        r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--engine", "none", "--peak-tflops", "1", *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])["train"]

    chunked, full, packed = run(), run("--loss", "hf"), run("--docs", "4")
    assert (chunked["loss_path"], chunked["ce_chunk"], full["loss_path"]) == ("chunked", 64, "hf")
    assert chunked["loss"] == pytest.approx(full["loss"], abs=1e-5)
    assert packed["docs"] == 4 and packed["flops_per_token"] == 581632
    assert math.isfinite(packed["loss"]) and packed["loss"] != pytest.approx(chunked["loss"], abs=1e-6)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--docs", "3"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "must divide the row length 128" in bad.stderr
