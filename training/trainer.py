"""The LoRA trainer: peft adapters on any transformers causal LM, scored only where a loss is taken.

The reference policy is the same model with the adapter disabled (no second copy in memory). The language-model
head runs only on the hidden states of trained positions: on a 135M model the 49k-row output layer is about a fifth
of the compute, and most of a game prompt carries no loss. Updates are compute-bound on a CPU, so every token is
scored once per pass (see samples.py for packing).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from stratagem.training.losses import (MAROConfig, PPOConfig, kl_reference_point, maro_act_loss,
                                       nested_mean_weights, ppo_token_loss)
from stratagem.training.samples import Batch, Sample


@dataclass
class TrainerConfig:
    rank: int = field(default=8, metadata={"help": "LoRA rank (the vLLM server must allow it: --max-lora-rank)."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / rank)."})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "Module names that get LoRA adapters."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate. 1e-3 suits rank-8 LoRA on the 135M "
                      "default model (benchmarks/learning.py: 2e-4 barely moves it in 6 iterations); lower it for "
                      "billion-parameter models."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0 = no clipping)."})
    epochs: int = field(default=1, metadata={"help": "Passes over the iteration's batch."})
    minibatches: int = field(default=2, metadata={"help": "Optimizer steps per pass: the batch's sequences are split "
                             "into this many mini-batches (PPO style). peft starts B at zero, so A gets no gradient "
                             "on the very first step; two or more steps per iteration train every LoRA matrix."})
    micro_batch_tokens: int = field(default=2048, metadata={"help": "Padded tokens per forward pass (gradient "
                                    "accumulation splits the batch into micro-batches of this size)."})
    dtype: str = field(default="auto", metadata={"help": "Base-model weights and compute: float32, bfloat16 or auto "
                       "(bfloat16 on a GPU or CPU that computes it natively, else float32). The LoRA weights stay "
                       "float32 (peft upcasts them). benchmarks/train_step.py: bf16 is 2.6x fp32 on an AVX-512 BF16 "
                       "CPU; sampling and adapter verification are unaffected (vLLM runs float32 on a CPU)."})
    logits_at_loss_only: bool = field(default=True, metadata={"help": "Run the LM head only on trained positions "
                                      "(off: full logits, for benchmarking)."})
    pack: bool = field(default=True, metadata={"help": "Pack a seat's prefix-consistent turns into one sequence."})
    max_seq_len: int = field(default=4096, metadata={"help": "Longest trained sequence; longer turns are dropped."})
    track_kl: bool = field(default=True, metadata={"help": "Compute the KL to the reference (one extra no-grad "
                           "pass) for the metrics even when the KL penalty is off."})


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX; Linux flags). Without it bf16 is emulated
    and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {name!r}")
    return table[name]


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class LoRATrainer:
    def __init__(self, model_path: str, config: TrainerConfig | None = None, *, seed: int = 0,
                 adapter_path: str | Path | None = None, device: str | None = None):
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        self.config = c = config or TrainerConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(c.dtype)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device)
        if adapter_path is not None:
            self.model = PeftModel.from_pretrained(base, str(adapter_path), is_trainable=True)
        else:
            lora = LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=list(c.target_modules),
                              lora_dropout=c.dropout, bias="none", task_type="CAUSAL_LM")
            self.model = get_peft_model(base, lora)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"no LoRA parameters: none of {c.target_modules} matched a module of {model_path}")
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        inner = self.model.get_base_model()
        self._decoder = inner.get_decoder()
        self._head = inner.get_output_embeddings()

    # ---- scoring -------------------------------------------------------------------------------------------
    def micro_batches(self, samples: list[Sample], indices: list[int] | None = None) -> Iterator[list[int]]:
        """Indices of samples grouped (longest first) so that padded length x count stays within the budget."""
        pool = range(len(samples)) if indices is None else indices
        order = sorted(pool, key=lambda i: -len(samples[i].input_ids))
        group: list[int] = []
        for i in order:
            longest = len(samples[group[0]].input_ids) if group else len(samples[i].input_ids)
            if group and longest * (len(group) + 1) > self.config.micro_batch_tokens:
                yield group
                group = []
            group.append(i)
        if group:
            yield group

    def token_logprobs(self, samples: list[Sample], *, reference: bool = False) -> list[torch.Tensor]:
        """log pi(token) at each sample's trained positions, one tensor per sample. Gradients flow unless called
        under no_grad; `reference` disables the adapter."""
        if not samples:
            return []
        pad = 0
        length = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), length), pad, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for b, s in enumerate(samples):
            ids[b, : len(s.input_ids)] = torch.tensor(s.input_ids)
            mask[b, : len(s.input_ids)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows = torch.tensor([b for b, s in enumerate(samples) for _ in s.positions], device=self.device)
        pos = torch.tensor([p for s in samples for p in s.positions], device=self.device)
        ctx = self.model.disable_adapter() if reference else contextlib.nullcontext()
        with ctx:
            if self.config.logits_at_loss_only:
                hidden = self._decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = self._head(hidden[rows, pos - 1]).float()
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, pos - 1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, pos][:, None])[:, 0]
        return list(torch.split(lp, [len(s.positions) for s in samples]))

    @torch.no_grad()
    def score(self, samples: list[Sample], *, reference: bool = False) -> list[torch.Tensor]:
        """No-grad log-probs over all samples, micro-batched."""
        self.model.eval()
        out: list[torch.Tensor | None] = [None] * len(samples)
        for mb in self.micro_batches(samples):
            for i, lp in zip(mb, self.token_logprobs([samples[i] for i in mb], reference=reference)):
                out[i] = lp
        return out  # type: ignore[return-value]

    # ---- updates -------------------------------------------------------------------------------------------
    def mini_batches(self, n_samples: int) -> list[list[int]]:
        """Sample indices dealt round-robin into min(minibatches, n_samples) groups, one optimizer step each. The
        nested-mean weights are fixed over the whole batch, so each group's loss is scaled by the group count to
        keep every step at the scale of the full-batch loss."""
        k = max(1, min(self.config.minibatches, n_samples))
        return [list(range(g, n_samples, k)) for g in range(k)]

    def _optimizer_step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def ppo_step(self, batch: Batch, act_advantages: list[float], cfg: PPOConfig) -> dict[str, float]:
        """Clipped-surrogate update. `act_advantages[a]` is the advantage of batch.acts[a], given to each of its
        tokens; tokens are aggregated per turn, trajectory and role (losses.nested_mean_weights)."""
        t0 = time.perf_counter()
        samples = batch.samples
        if not samples:
            return {"trained_tokens": 0.0}
        act_w = nested_mean_weights(batch.acts)
        want_ref = cfg.kl_coef > 0 or self.config.track_kl
        ref = self.score(samples, reference=True) if want_ref else None
        stats: dict[str, float] = {}
        groups = self.mini_batches(len(samples))
        for _ in range(self.config.epochs):
            self.model.train()
            loss_sum = kl_sum = clip_sum = ratio_sum = 0.0
            for group in groups:
                for mb in self.micro_batches(samples, group):
                    lps = self.token_logprobs([samples[i] for i in mb])
                    logp = torch.cat(lps)
                    acts = [a for i in mb for a in samples[i].acts]
                    old = torch.tensor([x for i in mb for x in samples[i].old_logprobs], device=logp.device)
                    adv = torch.tensor([act_advantages[a] for a in acts], device=logp.device)
                    w = torch.tensor([act_w[a] for a in acts], device=logp.device)
                    ref_lp = torch.cat([ref[i] for i in mb]) if ref is not None else None
                    tok_loss, st = ppo_token_loss(logp, old, adv, cfg, ref_lp)
                    loss = (w * tok_loss).sum()
                    (loss * len(groups)).backward()
                    loss_sum += float(loss.detach())
                    clip_sum += float(st["clipped"].sum())
                    ratio_sum += float(st["ratio"].sum())
                    if "kl" in st:
                        kl_sum += float(st["kl"].sum())
                grad_norm = self._optimizer_step()
        n = batch.n_trained_tokens
        elapsed = time.perf_counter() - t0
        stats.update(loss=loss_sum, clip_frac=clip_sum / n, ratio_mean=ratio_sum / n, grad_norm=grad_norm,
                     trained_tokens=float(n), input_tokens=float(batch.n_input_tokens), update_s=elapsed,
                     tokens_per_s=n * self.config.epochs / elapsed,
                     input_tokens_per_s=batch.n_input_tokens * self.config.epochs / elapsed)
        if ref is not None:
            stats["kl"] = kl_sum / n
        return stats

    def maro_step(self, batch: Batch, desirable: list[bool], mismatched: list[Sample],
                  cfg: MAROConfig) -> dict[str, float]:
        """MARO update: per act the implicit reward r = sum(log pi - log pi_ref) over its response tokens, the
        reference point z0 from the mismatched (prompt, response) samples (detached), and the per-act loss of
        losses.maro_act_loss averaged over the acts."""
        t0 = time.perf_counter()
        samples = batch.samples
        n_acts = len(batch.acts)
        if n_acts == 0:
            return {"trained_tokens": 0.0}
        ref = self.score(samples, reference=True)
        ref_act = torch.zeros(n_acts)
        for s, lp in zip(samples, ref):
            ref_act.index_add_(0, torch.tensor(s.acts), lp.cpu())
        z_pol, z_ref = self.score(mismatched), self.score(mismatched, reference=True)
        z0 = kl_reference_point(torch.stack([(p - r).sum().cpu() for p, r in zip(z_pol, z_ref)])
                                if mismatched else torch.zeros(0))
        labels = torch.tensor(desirable)
        groups = self.mini_batches(len(samples))
        for _ in range(self.config.epochs):
            self.model.train()
            loss_sum = r_sum_win = r_sum_lose = 0.0
            for group in groups:
                for mb in self.micro_batches(samples, group):
                    lps = self.token_logprobs([samples[i] for i in mb])
                    acts = torch.tensor([a for i in mb for a in samples[i].acts])
                    uniq, inv = torch.unique(acts, return_inverse=True)
                    pol = torch.zeros(len(uniq), device=lps[0].device).index_add(0, inv.to(lps[0].device),
                                                                                torch.cat(lps))
                    r = pol.cpu() - ref_act[uniq]
                    loss = maro_act_loss(r, z0, labels[uniq], cfg).sum() / n_acts
                    (loss * len(groups)).backward()
                    loss_sum += float(loss.detach())
                    r_sum_win += float(r.detach()[labels[uniq]].sum())
                    r_sum_lose += float(r.detach()[~labels[uniq]].sum())
                grad_norm = self._optimizer_step()
        n = batch.n_trained_tokens
        n_win = int(labels.sum())
        elapsed = time.perf_counter() - t0
        return {"loss": loss_sum, "z0": float(z0), "reward_desirable": r_sum_win / max(n_win, 1),
                "reward_undesirable": r_sum_lose / max(n_acts - n_win, 1), "desirable_acts": float(n_win),
                "undesirable_acts": float(n_acts - n_win), "grad_norm": grad_norm, "trained_tokens": float(n),
                "input_tokens": float(batch.n_input_tokens), "update_s": elapsed,
                "tokens_per_s": n * self.config.epochs / elapsed,
                "input_tokens_per_s": batch.n_input_tokens * self.config.epochs / elapsed}

    # ---- persistence ---------------------------------------------------------------------------------------
    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter (peft format, float32 LoRA weights) atomically: a kill leaves either the old
        directory or the complete new one."""
        import shutil

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        return path

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])

    def lora_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}
