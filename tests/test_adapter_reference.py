"""Installing an adapter each iteration keeps one fp32 copy of the base model in memory: a new adapter's weights are
swapped in place (the same numbers as loading it fresh), and the merged checkpoint is written from that copy."""

import torch
from helpers_lora import make_adapter

from stratagem.integrations.adapter_check import ReferenceModel, probe_prompt_ids


def _fresh(model_path, adapter, prompt, reply):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                                  str(adapter)).eval()
    ids = torch.tensor([prompt + reply])
    at = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    with torch.no_grad():
        lp = torch.log_softmax(m(input_ids=ids).logits[0, at].float(), -1)
    return lp.gather(-1, ids[0, at + 1, None])[:, 0].tolist()


def test_adapters_swap_in_memory_and_merge(model_path, tmp_path, monkeypatch):
    a1 = make_adapter(model_path, tmp_path / "a1", seed=1)
    a2 = make_adapter(model_path, tmp_path / "a2", seed=2)
    prompt = probe_prompt_ids(model_path)
    reply = prompt[-6:]  # any tokens will do
    from peft import PeftModel

    ref = ReferenceModel(model_path)
    ref.set_adapter(str(a1))
    with1, base1 = ref.logprobs(prompt, reply)
    attached, base_weights = ref.model, ref.base
    monkeypatch.setattr(PeftModel, "from_pretrained", None)  # a second attach (or base load) would fail here
    ref.set_adapter(str(a2))
    with2, base2 = ref.logprobs(prompt, reply)
    assert ref.model is attached and ref.base is base_weights  # swapped in place: nothing loaded again
    monkeypatch.undo()
    assert base1 == base2  # the base weights are untouched by the swap
    assert max(abs(x - y) for x, y in zip(with1, with2)) > 1e-3  # the second adapter is really in
    assert max(abs(x - y) for x, y in zip(with2, _fresh(model_path, a2, prompt, reply))) < 1e-5
    merged = ref.save_merged(tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = torch.tensor([prompt + reply])
    at = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    with torch.no_grad():
        lp = torch.log_softmax(m(input_ids=ids).logits[0, at].float(), -1).gather(-1, ids[0, at + 1, None])[:, 0]
    assert max(abs(x - y) for x, y in zip(lp.tolist(), with2)) < 1e-4
    assert ref.logprobs(prompt, reply)[1] == base1  # merging worked on a copy
