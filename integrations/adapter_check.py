"""Prove that a vLLM server samples from the LoRA adapter it claims to serve.

The check teacher-forces a fixed probe (a chat prompt and a reply) through the server (`prompt_logprobs`) and
through transformers + peft with the adapter on disk, and compares the per-token log-probs. It fails, naming the
adapter and the gap, when they differ beyond a tolerance (the server holds other weights: a stale or wrong adapter)
or when the server's adapter log-probs equal its base-model log-probs although the adapter is not zero (the adapter
never reached the engine). Adapters that silently fail to reach vLLM are the most common RL-with-LoRA failure.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from stratagem.integrations.vllm_server import BASE_NAME, AdapterVerificationError, read_adapter_config

if TYPE_CHECKING:
    from stratagem.integrations.vllm_server import VLLMServer

DEFAULT_PROBE = (
    "You play tic-tac-toe as X. Legal actions: <X(0,0)> <X(1,1)> <X(2,2)>. Reply with <answer>ACTION</answer>.",
    "I take the centre, which blocks the most lines. <answer><X(1,1)></answer>",
)
# the base model's own log-probs, identical up to float noise when the adapter did not reach the engine
SAME_AS_BASE = 1e-4


@functools.lru_cache(maxsize=2)
def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def probe_token_ids(model_path: str, probe: tuple[str, str] = DEFAULT_PROBE) -> tuple[list[int], int]:
    """Token ids of the probe rendered with the model's chat template, and where the reply starts."""
    tok = _tokenizer(model_path)
    prompt = tok.apply_chat_template([{"role": "user", "content": probe[0]}], add_generation_prompt=True,
                                     tokenize=False)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tok(probe[1], add_special_tokens=False)["input_ids"]
    return prompt_ids + reply_ids, len(prompt_ids)


def reference_logprobs(model_path: str, adapter_path: str | None, token_ids: list[int]) -> list[float]:
    """Teacher-forced log-probs of token_ids[1:] under the base model (+ the adapter), fp32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    ids = torch.tensor([token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp.tolist()


def verify_adapter(server: "VLLMServer", name: str, adapter_path: str, *, tolerance: float = 0.05,
                   probe: tuple[str, str] | None = None, merged: bool = False) -> dict[str, float]:
    """Compare the server's log-probs for adapter `name` with transformers + peft for `adapter_path`.

    The comparison is over the reply tokens of the probe; `tolerance` bounds the mean absolute difference (the
    engine may run in bf16 while the reference runs in fp32, which moves single tokens more than the mean).
    `merged`: the adapter was merged into the served base weights (`name` is then `base`), so there is no
    separate base model on the server to compare with. Returns the measured gaps; raises
    AdapterVerificationError."""
    read_adapter_config(adapter_path)
    if server.model_path is None:
        raise AdapterVerificationError("the server's model path is unknown; cannot compute reference log-probs")
    ids, reply_start = probe_token_ids(server.model_path, probe or DEFAULT_PROBE)
    sl = slice(reply_start - 1, None)  # log-probs are for ids[1:], so the reply starts one earlier
    served = server.prompt_logprobs(name, ids)[sl]
    served_base = served if merged else server.prompt_logprobs(BASE_NAME, ids)[sl]
    ref = reference_logprobs(server.model_path, adapter_path, ids)[sl]
    ref_base = reference_logprobs(server.model_path, None, ids)[sl]

    def gaps(a: list[float], b: list[float]) -> tuple[float, float]:
        d = [abs(x - y) for x, y in zip(a, b)]
        return sum(d) / len(d), max(d)

    mean_gap, max_gap = gaps(served, ref)
    base_mean, base_max = gaps(served, served_base)
    ref_effect, _ = gaps(ref, ref_base)
    result = {"mean_abs_diff": mean_gap, "max_abs_diff": max_gap, "adapter_vs_base_served": base_mean,
              "adapter_vs_base_reference": ref_effect, "tokens": len(served)}
    if not merged and ref_effect > SAME_AS_BASE and base_max < SAME_AS_BASE:
        raise AdapterVerificationError(
            f"adapter {name!r} ({adapter_path}) changes the reference log-probs by {ref_effect:.4f} on average, but the "
            f"server gives exactly its base-model log-probs: the adapter did not reach the engine")
    if mean_gap > tolerance:
        raise AdapterVerificationError(
            f"adapter {name!r} on the server does not match {adapter_path}: mean |log-prob difference| "
            f"{mean_gap:.4f} (max {max_gap:.4f}) over {len(served)} probe tokens exceeds the tolerance {tolerance}")
    return result
