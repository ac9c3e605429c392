"""Small LoRA adapters with known, non-zero weights for serving tests."""

from __future__ import annotations

from pathlib import Path


def make_adapter(model_path: str, out: Path, seed: int, rank: int = 8, scale: float = 0.02) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    # peft starts B at zero (the adapter is the identity); give it weights so it changes the model
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=scale)
    peft_model.save_pretrained(out)
    return out
