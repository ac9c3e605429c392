"""Update throughput of the LoRA trainer: trained (response) tokens per second for one PPO-style update on
synthetic game-shaped sequences (a prompt, then a short reply that carries the loss), on the default model.

Variants, each against the fp32 full-logits baseline measured in the same run: the LM head only at loss positions,
and bfloat16. With a GPU, the same on a 4B-shaped Llama with random weights. Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def _batch(vocab: int, n_seq: int, prompt_len: int, reply_len: int, seed: int = 0):
    from stratagem.training.samples import Act, Batch, Sample

    g = torch.Generator().manual_seed(seed)
    acts, samples = [], []
    for i in range(n_seq):
        ids = torch.randint(10, vocab, (prompt_len + reply_len,), generator=g).tolist()
        acts.append(Act(episode=i, turn=0, seat=i % 2, game="bench", role="xo"[i % 2], n_tokens=reply_len))
        samples.append(Sample(input_ids=ids, positions=list(range(prompt_len, prompt_len + reply_len)),
                              acts=[i] * reply_len, old_logprobs=[math.nan] * reply_len))
    return Batch(acts=acts, samples=samples)


def measure(model_path: str, dtype: str, loss_only: bool, batch, steps: int, device: str | None) -> dict:
    from stratagem.training.losses import PPOConfig
    from stratagem.training.trainer import LoRATrainer, TrainerConfig

    cfg = TrainerConfig(dtype=dtype, logits_at_loss_only=loss_only, track_kl=False, minibatches=1,
                        micro_batch_tokens=8192)
    tr = LoRATrainer(model_path, cfg, seed=0, device=device)
    adv = [1.0 if i % 2 else -1.0 for i in range(len(batch.acts))]
    tr.ppo_step(batch, adv, PPOConfig())  # warm-up (allocations, kernel selection)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.ppo_step(batch, adv, PPOConfig())
    dt = (time.perf_counter() - t0) / steps
    return {"dtype": dtype, "logits_at_loss_only": loss_only, "step_s": round(dt, 3),
            "trained_tokens_per_s": round(batch.n_trained_tokens / dt, 1),
            "input_tokens_per_s": round(batch.n_input_tokens / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--reply-len", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()

    from transformers import AutoConfig

    from stratagem.models import resolve

    path = resolve(a.model)
    batch = _batch(AutoConfig.from_pretrained(path).vocab_size, a.sequences, a.prompt_len, a.reply_len)
    runs = [measure(path, "float32", False, batch, a.steps, None), measure(path, "float32", True, batch, a.steps, None),
            measure(path, "bfloat16", True, batch, a.steps, None)]
    base = runs[0]["trained_tokens_per_s"]
    for r in runs:
        r["speedup_vs_fp32_full_logits"] = round(r["trained_tokens_per_s"] / base, 2)
    out = {"model": a.model, "threads": torch.get_num_threads(), "sequences": a.sequences, "prompt_len": a.prompt_len,
           "reply_len": a.reply_len, "trained_tokens_per_step": batch.n_trained_tokens, "runs": runs}
    if torch.cuda.is_available():
        import tempfile

        from transformers import LlamaConfig, LlamaForCausalLM

        # 4B-shaped (Qwen3-4B-like dims), random weights: throughput only
        cfg = LlamaConfig(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
        with tempfile.TemporaryDirectory() as d:
            with torch.device("cuda"):
                LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
            big = _batch(cfg.vocab_size, 32, 1024, 256)
            g = [measure(d, "bfloat16", False, big, a.steps, "cuda"), measure(d, "bfloat16", True, big, a.steps, "cuda")]
            g[1]["speedup_vs_full_logits"] = round(g[1]["trained_tokens_per_s"] / g[0]["trained_tokens_per_s"], 2)
            out["gpu_4b"] = {"device": torch.cuda.get_device_name(), "sequences": 32, "prompt_len": 1024,
                             "reply_len": 256, "runs": g}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
