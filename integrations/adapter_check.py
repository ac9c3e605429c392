"""Prove that a vLLM server samples from the LoRA adapter it claims to serve.

The server greedily continues a fixed probe prompt with the adapter, reporting the log-prob of each token it
sampled; transformers + peft, with the adapter on disk, score the same tokens. The check fails, naming the adapter
and the gap, when the two differ beyond a tolerance (the server holds other weights: a stale or wrong adapter), or
when the server's adapter answers exactly as its base model although the adapter is not zero (the adapter never
reached the engine). Adapters that silently fail to reach vLLM are the most common RL-with-LoRA failure.

It goes through the sampling path on purpose: that is what rollouts use, and vLLM's CPU build crashes when
teacher-forced prompt log-probs of a LoRA request are batched with other requests.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratagem.integrations.vllm_client import BASE_NAME, AdapterError, ServerError

if TYPE_CHECKING:
    from peft import PeftModel

    from stratagem.integrations.vllm_client import VLLMClient

class AdapterVerificationError(ServerError):
    """The server does not sample from the adapter it claims to serve."""


def run_adapter(run: str | os.PathLike, name: str) -> Path:
    """Where a run keeps the adapter served as `name`: RUN/adapters/NAME (iter-3), or, for a role's adapter of a
    run with per-role adapters (iter-3-X), RUN/adapters/iter-3/X. The path may not exist."""
    adapters = Path(run) / "adapters"
    head, _, role = name.rpartition("-")
    if head.startswith("iter-") and head.removeprefix("iter-").isdigit() and (adapters / head / role).is_dir():
        return adapters / head / role
    return adapters / name


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """Check that `path` is a peft LoRA adapter directory and return its config; a clear AdapterError if not."""
    p = Path(path)
    if not p.exists():
        raise AdapterError(f"adapter path {p} does not exist")
    cfg_file = p / "adapter_config.json"
    if not cfg_file.exists():
        raise AdapterError(f"{p} is not a LoRA adapter: no adapter_config.json")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_file} is not valid JSON: {e}") from e
    if cfg.get("peft_type", "LORA").upper() != "LORA":
        raise AdapterError(f"{p} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be served")
    if not any(p.glob("adapter_model.*")):
        raise AdapterError(f"{p} is not a LoRA adapter: no adapter_model.safetensors")
    return cfg


DEFAULT_PROBE = "You play tic-tac-toe as X. Legal actions: <X(0,0)> <X(1,1)> <X(2,2)>. Reply with <answer>ACTION</answer>."
PROBE_TOKENS = 16
# the base model's own log-probs, identical up to float noise when the adapter did not reach the engine
SAME_AS_BASE = 1e-4


@functools.lru_cache(maxsize=2)
def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def probe_prompt_ids(model_path: str, probe: str = DEFAULT_PROBE) -> list[int]:
    """Token ids of the probe rendered with the model's chat template, ready for the reply."""
    tok = _tokenizer(model_path)
    prompt = tok.apply_chat_template([{"role": "user", "content": probe}], add_generation_prompt=True, tokenize=False)
    return tok(prompt, add_special_tokens=False)["input_ids"]


class ReferenceModel:
    """The fp32 reference of a base model with one LoRA adapter, kept in memory for a whole run: installing the
    next iteration's adapter swaps its weights in place instead of reading the base model from disk again, and the
    same copy scores the verification probe and writes the merged weights. fp32, because the CPU engine serves
    fp32 and the check is tight (1e-3); a bf16 trainer's copy could not tell a 1e-3 gap from its own rounding."""

    def __init__(self, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.model: PeftModel | None = None  # a PeftModel around `base` once an adapter was set
        self._adapter_config: dict | None = None

    def set_adapter(self, adapter_path: str) -> None:
        """Make `adapter_path` the active adapter: its weights are copied in when its LoRA shape matches the
        current one, else the adapter is attached afresh (the base weights stay in memory either way)."""
        from peft import PeftModel, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        cfg = read_adapter_config(adapter_path)
        shape = {k: cfg.get(k) for k in ("r", "lora_alpha", "target_modules", "base_model_name_or_path")}
        if self.model is not None and shape == self._adapter_config:
            result = set_peft_model_state_dict(self.model, load_peft_weights(str(adapter_path), device="cpu"))
            unexpected = getattr(result, "unexpected_keys", None)  # peft annotates the result as a bare 'namedtuple'
            if unexpected:
                raise AdapterVerificationError(f"{adapter_path}: unexpected adapter weights "
                                               f"{list(unexpected)[:3]}")
        else:
            if self.model is not None:
                self.base = self.model.unload()
            self.model = PeftModel.from_pretrained(self.base, str(adapter_path)).eval()
            self._adapter_config = shape

    def logprobs(self, prompt_ids: list[int], reply_ids: list[int]) -> tuple[list[float], list[float]]:
        """Log-probs of `reply_ids` after `prompt_ids` with the adapter and with it disabled."""
        import torch

        assert self.model is not None, "set_adapter first"
        model = self.model
        ids = torch.tensor([prompt_ids + reply_ids])
        at = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)

        def score() -> list[float]:
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, at].float()
            return torch.log_softmax(logits, dim=-1).gather(-1, ids[0, at + 1, None])[:, 0].tolist()

        with_adapter = score()
        with model.disable_adapter():
            base = score()
        return with_adapter, base

    def save_merged(self, out: str | os.PathLike[str]) -> Path:
        """Write base + the active adapter merged into one fp32 checkpoint (weights and config), merged on a copy
        so this model keeps its unmerged base weights exactly."""
        import copy

        assert self.model is not None, "set_adapter first"
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        copy.deepcopy(self.model).merge_and_unload().save_pretrained(out, safe_serialization=True)
        return out


@functools.lru_cache(maxsize=1)
def reference_model(model_path: str) -> ReferenceModel:
    """The process's reference copy of `model_path` (one at a time)."""
    return ReferenceModel(model_path)


def reference_logprobs(model_path: str, adapter_path: str, prompt_ids: list[int],
                       reply_ids: list[int]) -> tuple[list[float], list[float]]:
    """Log-probs of `reply_ids` after `prompt_ids`, fp32 on the CPU, with the adapter and with it disabled (the
    base model is read from disk once per process; see ReferenceModel)."""
    ref = reference_model(model_path)
    ref.set_adapter(adapter_path)
    return ref.logprobs(prompt_ids, reply_ids)


def verify_adapter(client: VLLMClient, model_path: str, name: str, adapter_path: str | os.PathLike[str], *,
                   tolerance: float = 0.05, probe: str | None = None, merged: bool = False) -> dict[str, float]:
    """Compare the log-probs of the tokens the server behind `client` samples for adapter `name` with transformers
    + peft for `adapter_path` on its base model `model_path`.

    `tolerance` bounds the mean absolute difference over the probe's reply tokens (the engine may run in bf16
    while the reference runs in fp32, which moves single tokens more than the mean). `merged`: the adapter was
    merged into the served base weights (`name` is then `base`), so there is no separate base model on the server
    to compare with. Returns the measured gaps; raises AdapterVerificationError."""
    read_adapter_config(adapter_path)
    prompt = probe_prompt_ids(model_path, probe or DEFAULT_PROBE)
    reply, served = client.greedy_logprobs(name, prompt, PROBE_TOKENS)
    ref, ref_base = reference_logprobs(model_path, str(adapter_path), prompt, reply)

    def gaps(a: list[float], b: list[float]) -> tuple[float, float]:
        d = [abs(x - y) for x, y in zip(a, b)]
        return sum(d) / len(d), max(d)

    mean_gap, max_gap = gaps(served, ref)
    ref_effect, _ = gaps(ref, ref_base)
    result = {"mean_abs_diff": mean_gap, "max_abs_diff": max_gap, "adapter_vs_base_reference": ref_effect,
              "tokens": len(served)}
    if not merged:
        base_reply, served_base = client.greedy_logprobs(BASE_NAME, prompt, PROBE_TOKENS)
        same = base_reply == reply and gaps(served, served_base)[1] < SAME_AS_BASE
        result["adapter_vs_base_served"] = gaps(served, served_base)[0] if base_reply == reply else float("inf")
        if same and ref_effect > SAME_AS_BASE:
            raise AdapterVerificationError(
                f"adapter {name!r} ({adapter_path}) changes the reference log-probs by {ref_effect:.4f} on average, "
                f"but the server answers exactly as its base model: the adapter did not reach the engine")
    if mean_gap > tolerance:
        raise AdapterVerificationError(
            f"adapter {name!r} on the server does not match {adapter_path}: mean |log-prob difference| "
            f"{mean_gap:.4f} (max {max_gap:.4f}) over {len(served)} probe tokens exceeds the tolerance {tolerance}")
    return result
