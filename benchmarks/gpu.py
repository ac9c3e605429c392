"""One LoRA training step and generation throughput of a Qwen3-4B-shaped model with random weights.

Training: bf16 weights, LoRA on every linear layer of the decoder, AdamW on the LoRA weights, rows of --seq-len
tokens (with --docs N, N documents back to back, each attending only to itself through the tree attention of
stratagem/token_tree.py, positions restarting: packing without padding), loss on every next token within a
document, --batch rows per step. The loss runs the output layer --ce-chunk rows at a time and recomputes each chunk's
logits in the backward (stratagem/logits.py, the trainer's path), so the full logits never exist; `--loss hf` takes
the model's own loss over full logits instead. Reported:
tokens/s and MFU, the model FLOPs a step must do over the GPU's dense bf16 peak. The FLOPs of one token, with N the
matmul weights of the model (decoder linears and the output layer), r the LoRA weights, L layers, T the packed
length, d the attention width (heads x head dim):

    4 N            forward (2N) + the backward pass to the activations (2N); frozen weights get no weight gradient
  + 6 r            LoRA weights: forward, activation and weight gradients
  + 3 * 2 L T d    attention scores and mixing over T/2 causal positions on average (2 matmuls x 2 FLOPs x T/2 x d
                   per layer), forward plus a backward of twice that; T is a document's length

(the usual 6N of full fine-tuning would credit work a LoRA step does not do). With `--passes 3` each micro-batch
also runs the two no-grad forwards of a PPO update (old log-probs, then the reference with the adapter disabled),
each 2N + 2r + 2 L T d per token, counted in the FLOPs. Generation: tokens/s of greedy decoding, batched, with vLLM
when it is importable, else transformers `generate`.

`--preset NAME` takes the trainer's shape from a shipped preset (stratagem/presets/NAME.yaml): LoRA rank and alpha,
gradient checkpointing, the sequences of one optimizer step (trainer.sequences_per_step, run as micro-batches of
--micro-batch rows: MARSHAL's 2 per device), the three passes, and rows of --turns x sampling.max_tokens tokens
(default 2 turns: a two-move trajectory at MARSHAL's 4096-token turn budget; a whole trajectory may reach 32768).

Needs only torch and transformers (peft for the training step, vLLM optionally) and this repository's stratagem/
folder beside it (no install); what is missing is skipped and named in the output. `--tiny` runs a tiny shape on the CPU (what the test suite runs). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's stratagem/: logits, token trees
from stratagem.logits import head_logprobs  # noqa: E402  # needs only torch

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against torch.cuda.get_device_name in this order
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L4", 121.0),
)

PRESETS = Path(__file__).resolve().parents[1] / "stratagem" / "presets"
QWEN3_4B = dict(hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=256, tie_word_embeddings=True, max_position_embeddings=512)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def flops_per_token(n_matmul: int, n_lora: int, layers: int, seq_len: int, attn_width: int) -> float:
    """Model FLOPs of one trained token (see the module docstring). Hand check, the tiny shape of the test: N =
    2 x (64x64 + 64x32 + 64x32 + 64x64 + 3 x 64x128) + 256x64 = 2 x 36864 + 16384 = 90112; r = 0 gives
    4 x 90112 + 3 x 2 x 2 x 128 x 64 = 360448 + 98304 = 458752."""
    return 4.0 * n_matmul + 6.0 * n_lora + 3.0 * 2.0 * layers * seq_len * attn_width


def build_model(shape: dict[str, Any], dtype: Any, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from transformers import Qwen3Config as Config
    except ImportError:  # older transformers: a Llama of the same shape (Qwen3 adds q/k norms, a rounding error)
        from transformers import LlamaConfig as Config
    cfg = Config(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
    return model


def matmul_params(model: Any) -> int:
    """Weights that take part in a matmul: every nn.Linear (the output layer included, even when tied)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def forward_flops_per_token(n_matmul: int, n_lora: int, layers: int, seq_len: int, attn_width: int) -> float:
    """A no-grad forward: a third of flops_per_token's backward-inclusive count, i.e. 2N + 2r + 2 L T d."""
    return 2.0 * n_matmul + 2.0 * n_lora + 2.0 * layers * seq_len * attn_width


def load_preset(name: str) -> dict[str, Any]:
    """The trainer-side settings of a shipped preset, read from its YAML without importing Stratagem (this script
    must run where only torch and transformers are installed)."""
    import yaml

    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESETS.glob("*.yaml") if not p.stem.endswith(".reference"))
        raise SystemExit(f"--preset {name!r}: no {path.name}; shipped: {', '.join(names)}")
    cfg = yaml.safe_load(path.read_text()) or {}
    trainer, sampling = cfg.get("trainer", {}), cfg.get("sampling", {})
    return {"rank": trainer.get("rank", 8), "alpha": trainer.get("alpha", 16),
            "grad_ckpt": bool(trainer.get("gradient_checkpointing", False)),
            "batch": trainer.get("sequences_per_step") or 8, "turn_tokens": sampling.get("max_tokens", 48),
            "max_seq_len": trainer.get("max_seq_len", 4096)}


def train_step(shape: dict[str, Any], args: argparse.Namespace, device: Any, dtype: Any) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    model = build_model(shape, dtype, device)
    n_matmul = matmul_params(model)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha or 2 * args.rank, target_modules="all-linear", lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    step_fn = model
    if args.compile:
        step_fn = torch.compile(model)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq_len), generator=g).to(device)

    micro = args.micro_batch or args.batch
    inner = model.get_base_model()
    decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    run_decoder = torch.compile(decoder) if args.compile else decoder
    doc = args.seq_len // args.docs
    kw: dict[str, Any] = {}
    if args.docs > 1:  # documents back to back, each attending only to itself: the tree attention's roots
        from stratagem.token_tree import TreeLayout, use_tree_attention

        if not use_tree_attention(inner):
            raise SystemExit("--docs needs the model on SDPA attention")
        parents = [-1 if i % doc == 0 else i - 1 for i in range(args.seq_len)]
        kw = {"position_ids": (torch.arange(args.seq_len) % doc)[None].to(device),
              "attention_mask": torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device),
              "tree_layout": TreeLayout(parents, device)}
    # the next-token targets, without those that cross from one document into the next
    keep = torch.tensor([(i + 1) % doc != 0 for i in range(args.seq_len - 1)], device=device)

    def loss_of(rows: Any) -> Any:
        if args.loss == "hf" and args.docs == 1:
            return step_fn(input_ids=rows, labels=rows).loss
        hidden = run_decoder(input_ids=rows, **kw).last_hidden_state[:, :-1][:, keep]
        targets = rows[:, 1:][:, keep]
        lp, _ = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1),
                              chunk=args.ce_chunk if args.loss == "chunked" else 0)
        return -lp.mean()

    def step() -> float:
        total = 0.0
        for start in range(0, args.batch, micro):
            rows = ids[start:start + micro]
            if args.passes == 3:  # the update's old and reference log-probs: no-grad forwards of the same rows
                with torch.no_grad():
                    model.eval()
                    run_decoder(input_ids=rows, **kw)
                    with model.disable_adapter():
                        run_decoder(input_ids=rows, **kw)
                    model.train()
            loss = loss_of(rows) * (len(rows) / args.batch)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    tokens = args.batch * args.seq_len
    attn_width = shape["num_attention_heads"] * shape["head_dim"]
    # a token attends within its document: the attention term counts the document's length
    fpt = flops_per_token(n_matmul, n_lora, shape["num_hidden_layers"], doc, attn_width)
    if args.passes == 3:
        fpt += 2 * forward_flops_per_token(n_matmul, n_lora, shape["num_hidden_layers"], doc, attn_width)
    achieved = fpt * tokens / dt / 1e12
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    out = {"dtype": str(dtype).replace("torch.", ""), "batch": args.batch, "seq_len": args.seq_len,
           "tokens_per_step": tokens, "steps": args.steps, "step_s": dt, "tokens_per_s": tokens / dt,
           "matmul_params": n_matmul, "lora_params": n_lora, "lora_rank": args.rank, "flops_per_token": fpt,
           "achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
           "gradient_checkpointing": bool(args.grad_ckpt), "compiled": bool(args.compile),
           "micro_batch": micro, "passes": args.passes, "lora_alpha": args.alpha or 2 * args.rank,
           "loss_path": args.loss, "ce_chunk": args.ce_chunk if args.loss == "chunked" else None, "docs": args.docs,
           "loss": losses[-1]}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def generate_transformers(shape: dict[str, Any], args: argparse.Namespace, device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    model = build_model(shape, dtype, device).eval()
    g = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, shape["vocab_size"], (args.gen_batch, args.prompt_len), generator=g).to(device)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids[:, : min(8, args.prompt_len)], max_new_tokens=2, min_new_tokens=2, do_sample=False,
                       pad_token_id=0, eos_token_id=None)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    new = (out.shape[1] - args.prompt_len) * args.gen_batch
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"engine": "transformers", "batch": args.gen_batch, "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens, "seconds": dt, "tokens_per_s": new / dt}


def generate_vllm(shape: dict[str, Any], args: argparse.Namespace, dtype: Any) -> dict[str, Any]:
    """vLLM's offline engine on the same random weights (saved once to a temporary directory; no tokenizer, the
    prompts are token ids)."""
    import torch
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as d:
        build_model(shape, dtype, "cpu").save_pretrained(d)
        llm = LLM(model=d, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.85,
                  max_model_len=args.prompt_len + args.new_tokens + 16, seed=0)
        g = torch.Generator().manual_seed(1)
        prompts = [{"prompt_token_ids": torch.randint(0, shape["vocab_size"], (args.prompt_len,), generator=g).tolist()}
                   for _ in range(args.gen_batch)]
        sp = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True, temperature=0.0, detokenize=False)
        llm.generate(prompts[:2], sp)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate(prompts, sp)
        dt = time.perf_counter() - t0
    new = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine": "vllm", "batch": args.gen_batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "seconds": dt, "tokens_per_s": new / dt}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="A tiny shape on the CPU (smoke test).")
    ap.add_argument("--seq-len", type=int, default=None, help="Packed tokens per row (default 4096; tiny: 128).")
    ap.add_argument("--batch", type=int, default=None, help="Rows per step (default 2; tiny: 2).")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16).")
    ap.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default twice the rank).")
    ap.add_argument("--micro-batch", type=int, default=None, help="Rows per forward / backward (gradient "
                    "accumulation over --batch rows; default: all of them at once).")
    ap.add_argument("--passes", type=int, choices=(1, 3), default=None, help="1: the training forward + backward; "
                    "3: also the old and reference no-grad forwards of a PPO update (default 1).")
    ap.add_argument("--preset", default=None, help="Take rank, alpha, gradient checkpointing, sequences per "
                    "optimizer step, micro-batch 2, three passes and the row length from a shipped preset.")
    ap.add_argument("--turns", type=int, default=2, help="With --preset: rows of this many turns at the preset's "
                    "per-turn budget (sampling.max_tokens).")
    ap.add_argument("--steps", type=int, default=None, help="Timed steps (default 5; tiny: 2).")
    ap.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default 2; tiny: 1).")
    ap.add_argument("--grad-ckpt", action="store_true", help="Gradient checkpointing (less memory, ~1.3x compute).")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model.")
    ap.add_argument("--loss", choices=("chunked", "hf"), default="chunked", help="chunked: the decoder's hidden "
                    "states through the output layer --ce-chunk rows at a time, each chunk's logits recomputed in "
                    "the backward (stratagem/logits.py: full logits never exist); hf: full logits at once (the "
                    "model's own loss with --docs 1, the earlier measurement).")
    ap.add_argument("--ce-chunk", type=int, default=None, help="Rows per output-layer chunk (default 2048; tiny: "
                    "64).")
    ap.add_argument("--docs", type=int, default=1, help="Documents packed back to back in each row, each "
                    "attending only to itself (tree attention, positions restarting): packing without padding.")
    ap.add_argument("--peak-tflops", type=float, default=None, help="Peak of the device (default: the table).")
    ap.add_argument("--gen-batch", type=int, default=None, help="Prompts decoded at once (default 64; tiny: 4).")
    ap.add_argument("--prompt-len", type=int, default=None, help="Prompt tokens (default 512; tiny: 16).")
    ap.add_argument("--new-tokens", type=int, default=None, help="Generated tokens each (default 256; tiny: 8).")
    ap.add_argument("--engine", choices=("auto", "vllm", "transformers", "none"), default="auto",
                    help="Generation engine (auto: vLLM if importable, else transformers).")
    args = ap.parse_args(argv)
    if args.docs < 1:
        ap.error("--docs must be at least 1")
    preset = None
    if args.preset:
        preset = load_preset(args.preset)
        row = min(args.turns * preset["turn_tokens"], preset["max_seq_len"])
        for k, v in {"rank": preset["rank"], "alpha": preset["alpha"], "batch": preset["batch"], "micro_batch": 2,
                     "passes": 3, "seq_len": None if args.tiny else row}.items():
            if getattr(args, k) is None and v is not None:
                setattr(args, k, v)
        args.grad_ckpt = args.grad_ckpt or preset["grad_ckpt"]
    args.rank = args.rank or 16
    args.passes = args.passes or 1
    tiny = {"seq_len": 128, "batch": 2, "steps": 2, "warmup": 1, "gen_batch": 4, "prompt_len": 16, "new_tokens": 8,
            "ce_chunk": 64}
    full = {"seq_len": 4096, "batch": 2, "steps": 5, "warmup": 2, "gen_batch": 64, "prompt_len": 512,
            "new_tokens": 256, "ce_chunk": 2048}
    for k, v in (tiny if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    if args.seq_len % args.docs:
        ap.error(f"--docs {args.docs} must divide the row length {args.seq_len}")
    result: dict[str, Any] = {"benchmark": "gpu", "shape": "tiny" if args.tiny else "qwen3-4b", "skipped": {},
                              "preset": args.preset}
    try:
        import torch
    except ImportError:
        result["skipped"]["all"] = "torch is not installed"
        print(json.dumps(result))
        return result
    try:
        import transformers
    except ImportError:
        result["skipped"]["all"] = "transformers is not installed"
        print(json.dumps(result))
        return result
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dict(TINY if args.tiny else QWEN3_4B)
    result.update(device=torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or 'unknown'}, "
                  f"{torch.get_num_threads()} threads)", torch=torch.__version__, transformers=transformers.__version__,
                  model=shape)
    if not cuda and not args.tiny:
        result["skipped"]["gpu"] = "no CUDA device: the Qwen3-4B shape runs on a GPU only (use --tiny on a CPU)"
        print(json.dumps(result))
        return result

    if importlib.util.find_spec("peft") is not None:
        result["train"] = train_step(shape, args, device, dtype)
        gc.collect()  # the trainer's model and optimizer are gone: give their memory to the generation engine
        if cuda:
            torch.cuda.empty_cache()
    else:
        result["skipped"]["train"] = "peft is not installed"

    engine = args.engine
    if engine == "auto":
        engine = "vllm" if cuda and importlib.util.find_spec("vllm") is not None else "transformers"
    if engine == "vllm":
        result["generation"] = generate_vllm(shape, args, dtype)
    elif engine == "transformers":
        result["generation"] = generate_transformers(shape, args, device, dtype)
    else:
        result["skipped"]["generation"] = "--engine none"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
