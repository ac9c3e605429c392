"""The LoRA trainer: peft adapters on any transformers causal LM, scored only where a loss is taken.

The reference policy is the same model with the adapter disabled (no second copy in memory). The language-model
head runs only on the hidden states of trained positions: on a 135M model the 49k-row output layer is about a fifth
of the compute, and most of a game prompt carries no loss. Updates are compute-bound on a CPU, so every token is
scored once per pass (see samples.py for packing).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from safetensors.torch import load_file

from stratagem import faults
from stratagem.files import atomic_directory
from stratagem.logits import head_logprobs
from stratagem.token_tree import common_prefix, tree_groups, tree_hidden
from stratagem.training.distributed import current
from stratagem.training.losses import MAROConfig, PPOConfig
from stratagem.training.objectives import Objective, Targets, get_loss
from stratagem.training.samples import Batch, Sample

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class TrainerConfig:
    rank: int = field(default=8, metadata={"help": "LoRA rank (the vLLM server must allow it: --max-lora-rank).",
                                             "min": 1})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / rank).",
                                                  "min": 0.0})
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      metadata={"help": "Module names that get LoRA adapters; all-linear: every "
                                                "linear layer but the output head (peft's shorthand), nearest to "
                                                "MARSHAL's full fine-tuning. The server must serve adapters on "
                                                "those modules."})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout.", "min": 0.0, "max": 1.0})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate. 1e-3 suits rank-8 LoRA on the 135M "
                      "default model (benchmarks/learning.py: 2e-4 barely moves it in 6 iterations); lower it for "
                      "billion-parameter models.", "min": 0.0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, on every LoRA matrix. MARSHAL: "
                                "0.05, which Megatron does not apply to 1-D parameters (biases, norms); LoRA with "
                                "bias='none' has none, so nothing is exempt here.", "min": 0.0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW beta1, beta2 (two "
                               "numbers below 1). MARSHAL: 0.9, 0.95 (adam_beta1 / adam_beta2 of its "
                               "agentic_val_*_selfplay.yaml).", "min": 0.0, "max": 1.0})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon (MARSHAL leaves transformers' default, "
                            "1e-8).", "min": 0.0})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, or cosine: lr decays to min_lr by the "
                             "end of the run. The steps per iteration vary with the batch, so progress is counted in "
                             "iterations: step s of the S steps of iteration k of K is at (k - 1 + s / S) / K. "
                             "MARSHAL: cosine to 0 over all optimizer steps (cosine_with_min_lr).",
                             "choices": ("constant", "cosine")})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warmup from 0 over the first optimizer steps of "
                              "the run (step g, counted from 0, gets g / warmup_steps of the scheduled lr, as in "
                              "Megatron), under either schedule. MARSHAL: 10.", "min": 0})
    min_lr: float = field(default=0.0, metadata={"help": "The lr the cosine schedule ends at (MARSHAL: 0).",
                                                  "min": 0.0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0 = no clipping).",
                                                        "min": 0.0})
    epochs: int = field(default=1, metadata={"help": "Passes over the iteration's batch.", "min": 1})
    minibatches: int = field(default=2, metadata={"help": "Optimizer steps per pass: the batch's sequences are split "
                             "into this many mini-batches (PPO style). peft starts B at zero, so A gets no gradient "
                             "on the very first step; two or more steps per iteration train every LoRA matrix. "
                             "Ignored when sequences_per_step is set.", "min": 1})
    sequences_per_step: int = field(default=0, metadata={"help": "Sequences per optimizer step: the batch is split "
                                    "into ceil(n / sequences_per_step) mini-batches, so bigger batches take more "
                                    "steps (MARSHAL: 8, one epoch); 0 = a fixed count, minibatches.", "min": 0})
    micro_batch_tokens: int = field(default=2048, metadata={"help": "Padded tokens per forward pass (gradient "
                                    "accumulation splits the batch into micro-batches of this size).", "min": 1})
    dtype: str = field(default="auto", metadata={"help": "Base-model weights and compute: float32, bfloat16 or auto "
                       "(bfloat16 on a GPU or CPU that computes it natively, else float32). The LoRA weights stay "
                       "float32 (peft upcasts them). benchmarks/train_step.py: bf16 is 2.6x fp32 on an AVX-512 BF16 "
                       "CPU; sampling and adapter verification are unaffected (vLLM runs float32 on a CPU).",
                       "choices": ("auto", "float32", "fp32", "bfloat16", "bf16")})
    logits_at_loss_only: bool = field(default=True, metadata={"help": "Run the LM head only on trained positions "
                                      "(off: full logits, for benchmarking)."})
    pack: bool = field(default=True, metadata={"help": "Pack a seat's prefix-consistent turns into one sequence."})
    shared_prefix: bool = field(default=True, metadata={"help": "Run the tokens that several sequences of a "
                                "micro-batch start with (a game's system line, rules and instructions, and deeper: "
                                "see prefix_tree) once and reuse them for every sequence, in all three passes "
                                "(gradients flow through the shared part once); micro-batches are then grouped by "
                                "their opening tokens and the shared part counts once against micro_batch_tokens. "
                                "Off: every sequence computed from its first token, padded to the longest."})
    min_shared_prefix: int = field(default=16, metadata={"help": "Share a prefix only when it is at least this many "
                                   "tokens (a shorter one saves less than the extra forward call costs; the opening "
                                   "layout only).", "min": 1})
    prefix_tree: bool = field(default=True, metadata={"help": "With shared_prefix: lay a micro-batch out as one tree "
                              "of tokens, every common prefix computed once at any depth (two games' first prompts, "
                              "the same reply to the same board, ...), as one row with tree attention (each token "
                              "attends to its ancestors; positions are depths) and no padding; micro_batch_tokens "
                              "then counts the tree's tokens. Off: only the micro-batch's common opening is shared, "
                              "through the key / value cache, and the rest is padded. Works under gradient "
                              "checkpointing too."})
    logit_chunk_rows: int = field(default=2048, metadata={"help": "Trained positions sent through the output layer "
                                  "at once: with more in a micro-batch, the log-probs are computed in chunks of this "
                                  "many and each chunk's logits are recomputed in the backward instead of kept "
                                  "(stratagem/logits.py; vocabulary-wide fp32 logits are the largest tensor of a "
                                  "step on a large-vocabulary model). 0 = all at once.", "min": 0})
    max_seq_len: int = field(default=4096, metadata={"help": "Longest trained sequence; longer turns are dropped.",
                                                  "min": 1})
    track_kl: bool = field(default=True, metadata={"help": "Compute the KL to the reference (one extra no-grad "
                           "pass) for the metrics even when the KL penalty is off."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each decoder layer's "
                                         "activations in the backward pass instead of keeping them: about 1.3x the "
                                         "compute for a fraction of the activation memory (long sequences on a GPU; "
                                         "benchmarks/gpu.py --grad-ckpt measures it)."})
    adapters: str = field(default="shared", metadata={"help": "shared: one LoRA adapter trained on every seat's "
                          "turns. per_role: one adapter per role (tic-tac-toe's X and O, the poker and Hanabi seats "
                          "player_0 and player_1, the mystery's culprit and civilian), each trained only on its own "
                          "role's turns with its own AdamW state and gradient clipping, saved as adapters/iter-k/ROLE "
                          "and served side by side as iter-k-ROLE. Roles are the games' names, so games that name "
                          "their seats alike (Kuhn and Leduc: player_0, player_1) share a role's adapter. Needs "
                          "self-play served as adapters (no loop.opponents, no league, no merged weights).",
                          "choices": ("shared", "per_role")})
    temper_logprobs: bool = field(default=True, metadata={"help": "Score log-probs (ratio, old log-probs, KL) under "
                                  "softmax(logits / T), the distribution sampled at sampling temperature T; off: "
                                  "under the raw logits, as MARSHAL does (megatron_strategy.py op_compute_log_probs) "
                                  "although it samples at 0.6."})

    def __post_init__(self):
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: must be two numbers in [0, 1), got {list(self.betas)}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: must be <= lr ({self.lr:g}), got {self.min_lr:g}")


def scheduled_lr(c: TrainerConfig, step: int, progress: float) -> float:
    """The learning rate of optimizer step `step` (counted from 0 over the whole run) at `progress` (0 to 1) of the
    run. As in Megatron and transformers, the first warmup step has lr 0 (it still feeds Adam's moments)."""
    lr = c.lr
    if c.lr_schedule == "cosine":
        lr = c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if step < c.warmup_steps:
        lr *= step / c.warmup_steps
    return lr


def shareable(a: Sample, b: Sample) -> int:
    """How many opening tokens two sequences can share: their common prefix, stopped one token before the first
    trained position of either (the logits predicting a trained token come from the unshared part)."""
    return max(0, min(common_prefix(a.input_ids, b.input_ids), min(a.positions, default=1) - 1,
                      min(b.positions, default=1) - 1))


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


SHARED = "default"  # the adapter's name in shared mode (peft's default: saved at the directory's top)
ROLE = "role_"  # peft's name of a role's adapter: a bare short name ("o") could match peft's own "lora_" keys


def check_roles(roles: list[str]) -> list[str]:
    """Role names that can name a peft adapter (a module-dict key: no '.') and a served model."""
    for r in roles:
        if not r or r == SHARED or not all(ch.isalnum() or ch in "_-" for ch in r):
            raise ValueError(f"trainer.adapters per_role: role {r!r} cannot name an adapter (letters, digits, _ and "
                             f"- only, not {SHARED!r})")
    if len(set(roles)) != len(roles):
        raise ValueError(f"trainer.adapters per_role: roles listed twice in {roles}")
    return roles


class LoRATrainer:
    def __init__(self, model_path: str, config: TrainerConfig | None = None, *, seed: int = 0,
                 adapter_path: str | Path | None = None, device: str | None = None, temperature: float = 1.0,
                 total_iterations: int | None = None, roles: list[str] | None = None):
        """`temperature`: the sampling temperature of the policy; log-probs are those of softmax(logits / T), the
        distribution the replies were sampled from (unless `config.temper_logprobs` is off). `total_iterations`:
        the run's K, the length of a cosine schedule (required by it; see `update`). `roles`: the adapters of
        `config.adapters: per_role`, one per role name (a Sample trains the adapter of its `role`);
        `adapter_path` then holds one subdirectory per role."""
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        self.config = c = config or TrainerConfig()
        self.model_path = model_path
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 to score a sampled policy; got {temperature}")
        self.temperature = float(temperature)
        if c.lr_schedule == "cosine" and not total_iterations:
            raise ValueError("lr_schedule 'cosine' needs total_iterations: it decays over the run's iterations")
        self.total_iterations = total_iterations
        self.optimizer_steps = 0  # over the whole run: the warmup's clock, saved in state_dict

        self.dist = current()  # under torchrun / accelerate launch: this rank's GPU, sharded samples, summed grads
        self.device = torch.device(device or self.dist.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(c.dtype)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype)
        # transformers wraps PreTrainedModel.to with functools.wraps, so mypy loses the bound self
        base = base.to(self.device)  # type: ignore[arg-type]  # see above: a false positive of the wrapper's stub
        if c.adapters == "per_role" and not roles:
            raise ValueError("trainer.adapters per_role: the trainer needs the run's roles (one adapter each)")
        self.roles = check_roles(list(roles or [])) if c.adapters == "per_role" else []
        names = [ROLE + r for r in self.roles] or [SHARED]
        if adapter_path is not None:
            where = {ROLE + r: Path(adapter_path) / r for r in self.roles} or {SHARED: Path(adapter_path)}
            self.model = PeftModel.from_pretrained(base, str(where[names[0]]), adapter_name=names[0],
                                                   is_trainable=True)
            for n in names[1:]:
                self.model.load_adapter(str(where[n]), adapter_name=n, is_trainable=True)
        else:
            # peft takes the all-linear shorthand only as a string; a list is a set of module names
            targets = "all-linear" if list(c.target_modules) == ["all-linear"] else list(c.target_modules)
            # peft annotates lora_alpha as int but only divides by it (alpha / r): a float alpha works
            lora = LoraConfig(r=c.rank, lora_alpha=c.alpha,  # type: ignore[arg-type]  # peft's narrow annotation
                              target_modules=targets,
                              lora_dropout=c.dropout, bias="none", task_type="CAUSAL_LM")
            self.model = get_peft_model(base, lora, adapter_name=names[0])
            for n in names[1:]:
                self.model.add_adapter(n, lora)
        # by name, not requires_grad: peft marks only the active adapter trainable
        self.role_params = {n: [p for k, p in self.model.named_parameters() if f".{n}." in k and ".lora_" in k]
                            for n in names}
        self.params = [p for ps in self.role_params.values() for p in ps]
        if not all(self.role_params.values()):
            raise ValueError(f"no LoRA parameters: none of {c.target_modules} matched a module of {model_path}")
        self._active = names[0]
        self.model.set_adapter(self._active)
        self.dist.broadcast_params(self.params)
        # one AdamW per adapter: a role's moments and step count move only on the steps that train it
        self.optimizers = {n: torch.optim.AdamW(ps, lr=c.lr, betas=(c.betas[0], c.betas[1]), eps=c.adam_eps,
                                                weight_decay=c.weight_decay) for n, ps in self.role_params.items()}
        inner = cast("PreTrainedModel", self.model.get_base_model())  # peft types it as any nn.Module
        if c.gradient_checkpointing:  # non-reentrant: the frozen embeddings need no requires_grad hook
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._decoder = inner.get_decoder()
        self._head = inner.get_output_embeddings()

    @property
    def optimizer(self) -> torch.optim.AdamW:
        """The one optimizer of a shared adapter (per role: `optimizers[role]`)."""
        if self.roles:
            raise AttributeError("trainer.adapters per_role has one optimizer per role: use optimizers[role]")
        return self.optimizers[SHARED]

    def role_optimizer(self, role: str) -> torch.optim.AdamW:
        return self.optimizers[ROLE + role]

    def adapter_of(self, samples: list[Sample]) -> str:
        """The adapter that scores and trains these samples: the shared one, or their role's (one role per call)."""
        if not self.roles:
            return SHARED
        roles = {s.role for s in samples}
        if len(roles) != 1 or not roles <= set(self.roles):
            raise ValueError(f"per-role adapters: samples of roles {sorted(roles)} in one pass; the adapters are "
                             f"{', '.join(self.roles)}")
        return ROLE + roles.pop()

    def use(self, name: str) -> None:
        if name != self._active:
            self.model.set_adapter(name)
            self._active = name

    def use_role(self, role: str) -> None:
        """Put role `role`'s adapter in place (scoring outside the update: the exact evaluation of a seat)."""
        if role not in self.roles:
            raise ValueError(f"per-role adapters: no adapter for role {role!r}; the adapters are "
                             f"{', '.join(self.roles) or 'one shared adapter'}")
        self.use(ROLE + role)

    # ---- scoring -------------------------------------------------------------------------------------------
    @property
    def tree(self) -> bool:
        """Whether micro-batches are computed as token trees (every common prefix once; see TrainerConfig)."""
        c = self.config
        return c.shared_prefix and c.prefix_tree and c.logits_at_loss_only

    @property
    def sharing(self) -> bool:
        """Whether the micro-batch's common opening is shared through the key / value cache (no cache under
        gradient checkpointing)."""
        c = self.config
        return c.shared_prefix and not self.tree and c.logits_at_loss_only and not c.gradient_checkpointing

    def share_length(self, samples: list[Sample]) -> int:
        """How many opening tokens a micro-batch computes once in the opening layout (0: every sequence from its
        first token, or the tree layout, which shares at every depth)."""
        if not self.sharing or len(samples) < 2:
            return 0
        share = min(shareable(samples[0], s) for s in samples[1:])
        return share if share >= self.config.min_shared_prefix else 0

    def micro_batches(self, samples: list[Sample], indices: list[int] | None = None) -> Iterator[list[int]]:
        """Indices of samples grouped so that the tokens computed per forward stay within the budget: the shared
        opening once (none without sharing) plus the padded rest of each sequence."""
        # indices given = the samples of one optimizer step: this rank's share of them (all of them on one process)
        pool = range(len(samples)) if indices is None else \
            self.dist.shard(indices, [len(s.input_ids) for s in samples])
        if self.roles:  # one adapter per forward: a micro-batch holds one role's sequences
            unknown = [samples[i] for i in pool if samples[i].role not in self.roles]
            if unknown:
                self.adapter_of(unknown)  # raises, naming the role
            for role in self.roles:
                yield from self._grouped(samples, [i for i in pool if samples[i].role == role])
            return
        yield from self._grouped(samples, list(pool))

    def _grouped(self, samples: list[Sample], pool: list[int]) -> Iterator[list[int]]:
        if self.tree:
            yield from self._grouped_tree(samples, pool)
            return
        share = self.sharing
        # token order puts the sequences with the longest common openings side by side; without sharing, longest
        # first keeps the padding small
        order = sorted(pool, key=(lambda i: samples[i].input_ids) if share else (lambda i: -len(samples[i].input_ids)))
        budget = self.config.micro_batch_tokens
        group: list[int] = []
        cost = shared = longest = 0
        for i in order:
            n = len(samples[i].input_ids)
            if group:
                lcp = min(shared, shareable(samples[group[0]], samples[i])) if share else 0
                top = max(longest, n)
                once = lcp if lcp >= self.config.min_shared_prefix else 0
                together = once + (len(group) + 1) * (top - once)
                # with sharing a sequence joins only when that costs no more than computing it apart; without,
                # padding is the accepted price of batching
                if together <= (min(budget, cost + n) if share else budget):
                    group.append(i)
                    cost, shared, longest = together, lcp, top
                    continue
                yield group
            group, cost, shared, longest = [i], n, n, n
        if group:
            yield group

    def _grouped_tree(self, samples: list[Sample], pool: list[int]) -> Iterator[list[int]]:
        """Micro-batches of at most micro_batch_tokens tree tokens (`tree_groups`)."""
        for g in tree_groups([samples[i].input_ids for i in pool], self.config.micro_batch_tokens):
            yield [pool[j] for j in g]

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor, share: int) -> torch.Tensor:
        """The decoder's last hidden states of positions share.. (all positions when share is 0). The first `share`
        tokens, the same in every row, run once in a batch of one; their keys / values are broadcast to the rows
        (expand: no copy; the backward sums the rows' gradients into the one prefix computation)."""
        if share == 0:
            return self._decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        from transformers import DynamicCache
        from transformers.cache_utils import CacheLayerMixin

        cache = DynamicCache(config=self._decoder.config)
        self._decoder(input_ids=ids[:1, :share], past_key_values=cache, use_cache=True)
        for layer in cache.layers:
            if not isinstance(layer, CacheLayerMixin) or layer.keys is None or layer.values is None:
                raise TypeError(f"shared-prefix scoring broadcasts each layer's key / value cache; a "
                                f"{type(layer).__name__} has none (set trainer.shared_prefix false)")
            layer.keys = layer.keys.expand(ids.shape[0], -1, -1, -1)
            layer.values = layer.values.expand(ids.shape[0], -1, -1, -1)
        return self._decoder(input_ids=ids[:, share:], attention_mask=mask, past_key_values=cache,
                             use_cache=True).last_hidden_state

    def token_logprobs(self, samples: list[Sample], *, reference: bool = False,
                       entropy: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """log pi(token) at each sample's trained positions, one tensor per sample. Gradients flow unless called
        under no_grad; `reference` disables the adapter. Given a list as `entropy`, the policy's entropy at the
        same positions (same logits, so the same temperature) is appended to it, one tensor per sample."""
        if not samples:
            return []
        if self.tree and len(samples) > 1:
            return self._tree_logprobs(samples, reference=reference, entropy=entropy)
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
        self.use(self.adapter_of(samples))
        ctx = self.model.disable_adapter() if reference else contextlib.nullcontext()
        share = self.share_length(samples)
        with ctx:
            if self.config.logits_at_loss_only:
                hidden = self._hidden(ids, mask, share)
                return self._logprobs(self._head, hidden[rows, pos - 1 - share], ids[rows, pos], samples, entropy)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, pos - 1]
            return self._logprobs(torch.nn.Identity(), logits, ids[rows, pos], samples, entropy)

    def _tree_logprobs(self, samples: list[Sample], *, reference: bool,
                       entropy: list[torch.Tensor] | None) -> list[torch.Tensor]:
        self.use(self.adapter_of(samples))
        ctx = self.model.disable_adapter() if reference else contextlib.nullcontext()
        with ctx:
            hidden, paths = tree_hidden(self._decoder, [s.input_ids for s in samples], self.device)
            # the logit of trained token p comes from the node of token p - 1 on the sample's path
            nodes = torch.tensor([path[p - 1] for s, path in zip(samples, paths) for p in s.positions],
                                 device=self.device)
            targets = torch.tensor([s.input_ids[p] for s in samples for p in s.positions], device=self.device)
            return self._logprobs(self._head, hidden[nodes], targets, samples, entropy)

    def _logprobs(self, head: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, targets: torch.Tensor,
                  samples: list[Sample], entropy: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """Per-sample log-probs of `targets` (the trained tokens in sample order) under the tempered logits of
        `head(rows)`, `trainer.logit_chunk_rows` rows at a time (stratagem/logits.py)."""
        temperature = self.temperature if self.config.temper_logprobs else 1.0
        lp, ent = head_logprobs(head, rows, targets, temperature=temperature, chunk=self.config.logit_chunk_rows,
                                entropy=entropy is not None)
        sizes = [len(s.positions) for s in samples]
        if entropy is not None and ent is not None:
            entropy.extend(torch.split(ent, sizes))
        return list(torch.split(lp, sizes))

    @torch.no_grad()
    def score(self, samples: list[Sample], *, reference: bool = False,
              groups: list[list[int]] | None = None) -> list[torch.Tensor]:
        """No-grad log-probs over all samples, micro-batched. With `groups` (the update's mini-batches), the
        micro-batches are exactly those of the update, so the same padded shapes give bit-identical log-probs in
        low precision (the old log-probs of the first step then equal the new ones); under distributed training
        only this rank's share of each group is scored."""
        self.model.eval()
        out: list[torch.Tensor | None] = [None] * len(samples)
        batches = self.micro_batches(samples) if groups is None else \
            (mb for g in groups for mb in self.micro_batches(samples, g))
        for mb in batches:
            for i, lp in zip(mb, self.token_logprobs([samples[i] for i in mb], reference=reference)):
                out[i] = lp
        return out  # type: ignore[return-value]

    # ---- updates -------------------------------------------------------------------------------------------
    def mini_batches(self, n_samples: int) -> list[list[int]]:
        """Sample indices dealt round-robin into groups, one optimizer step each: ceil(n / sequences_per_step)
        groups when that is set (at most that many sequences each, sizes within one of each other), else
        min(minibatches, n). Dealt rather than shuffled (MARSHAL shuffles): the same n always gives the same groups,
        so the old / reference log-probs that `prepare` scores in these groups match the update's without shared
        RNG state, a resume splits as the uninterrupted run did, and the two seats of a game (adjacent samples) land
        in different steps. The nested-mean weights are fixed over the whole batch, so each group's loss is scaled
        by the group count to keep every step at the scale of the full-batch loss."""
        per_step = self.config.sequences_per_step
        k = max(1, min(-(-n_samples // per_step) if per_step else self.config.minibatches, n_samples))
        return [list(range(g, n_samples, k)) for g in range(k)]

    def _optimizer_step(self, lr: float, names: list[str]) -> float:
        """One step of the adapters `names` (the roles in this step's mini-batch, decided from the whole group, so
        every rank steps the same ones); each is clipped on its own. Returns the norm over them, before clipping."""
        norms = []
        for n in names:
            params, opt = self.role_params[n], self.optimizers[n]
            self.dist.all_reduce_grads(params)  # sum of the ranks' shares = the single-process gradient
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm or float("inf"))))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return math.sqrt(sum(x * x for x in norms))

    def update(self, batch: Batch, objective: Objective, targets: Targets, *,
               iteration: int | None = None) -> dict[str, float]:
        """The one update path: `objective.prepare` (reference / old log-probs, no grad), then `epochs` passes over
        the batch split into mini-batches (one optimizer step each), each mini-batch into micro-batches (gradient
        accumulation). Each mini-batch's loss is scaled by the number of mini-batches because the objectives' weights
        are fixed over the whole batch (see mini_batches; the objective may deal the samples otherwise, as MARO
        does to mix episodes and roles).

        `iteration`: this update's k (1-based) of `total_iterations`, which a cosine schedule needs (the constant one
        ignores it): passing the progress in, rather than counting calls, keeps an empty batch or a rolled-back
        resume from shifting the schedule."""
        t0 = time.perf_counter()
        samples = batch.samples
        if self.config.lr_schedule == "cosine" and (iteration is None or iteration < 1):
            raise ValueError(f"lr_schedule 'cosine' needs update(..., iteration=k) with k >= 1, got {iteration}")
        if not samples:
            return {"trained_tokens": 0.0}
        state = objective.prepare(self, batch, targets)
        state["epochs"] = self.config.epochs
        t_policy = time.perf_counter()
        groups = objective.mini_batches(self, batch)
        n_steps = self.config.epochs * len(groups)
        sums: dict[str, float] = {}
        grad_norm = lr = 0.0
        for epoch in range(self.config.epochs):
            for g, group in enumerate(groups):
                objective.on_minibatch(self, batch, group, state)
                self.model.train()
                for mb in self.micro_batches(samples, group):
                    ents: list[torch.Tensor] | None = [] if objective.wants_entropy else None
                    lps = self.token_logprobs([samples[i] for i in mb], entropy=ents)
                    if ents is not None:
                        state["entropy"] = ents  # this micro-batch's, beside its log-probs
                    loss, st = objective.loss(self, batch, mb, lps, state, first_step=epoch == 0 and g == 0)
                    (loss * len(groups)).backward()
                    for k, v in st.items():
                        sums[k] = sums.get(k, 0.0) + v
                faults.point("update.step")
                done = (epoch * len(groups) + g) / n_steps  # of this iteration's steps
                if self.config.lr_schedule == "cosine":
                    # checked above and in __init__: the cosine schedule has both
                    assert iteration is not None and self.total_iterations
                    progress = (iteration - 1 + done) / self.total_iterations
                else:
                    progress = 0.0
                lr = scheduled_lr(self.config, self.optimizer_steps, progress)
                names = [ROLE + r for r in self.roles if any(samples[i].role == r for i in group)] or [SHARED]
                grad_norm = self._optimizer_step(lr, names)
        end = time.perf_counter()
        elapsed = end - t0
        n = batch.n_trained_tokens
        sums = self.dist.all_reduce_sum(sums)  # each rank summed over its shard only
        return {**objective.summary(sums, batch, state), "grad_norm": grad_norm, "lr": lr,
                "trained_tokens": float(n), "input_tokens": float(batch.n_input_tokens), "update_s": elapsed,
                "policy_s": end - t_policy,  # the forward + backward passes (prepare's: ref_s, old_s)
                "tokens_per_s": n * self.config.epochs / elapsed,
                "input_tokens_per_s": batch.n_input_tokens * self.config.epochs / elapsed}

    def ppo_step(self, batch: Batch, act_advantages: list[float], cfg: PPOConfig, *,
                 iteration: int | None = None) -> dict[str, float]:
        """The clipped policy loss with per-act advantages (shorthand for update with the 'ppo' objective)."""
        return self.update(batch, get_loss("ppo")(cfg), Targets(advantages=act_advantages), iteration=iteration)

    def maro_step(self, batch: Batch, desirable: list[bool], mismatched: list[Sample],
                  cfg: MAROConfig, *, iteration: int | None = None) -> dict[str, float]:
        """The MARO loss (shorthand for update with the 'maro' objective)."""
        return self.update(batch, get_loss("maro")(cfg), Targets(labels=desirable, mismatched=mismatched),
                           iteration=iteration)

    # ---- persistence ---------------------------------------------------------------------------------------
    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter (peft format, float32 LoRA weights) atomically: a kill leaves either the old
        directory or the complete new one."""

        with atomic_directory(path) as tmp:
            self.write_adapter(tmp)
        return Path(path)

    def write_adapter(self, directory: Path) -> None:
        """The adapter's files into `directory` (peft format); per role, one standalone adapter in directory/ROLE
        (what a server loads as iter-k-ROLE)."""
        self.model.save_pretrained(str(directory))
        for r in self.roles:  # peft writes a named adapter to directory/NAME
            (directory / (ROLE + r)).rename(directory / r)

    def state_dict(self) -> dict:
        opt = {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}} if self.roles else \
            {"optimizer": self.optimizers[SHARED].state_dict()}
        return {**opt, "rng": rng_state(), "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers") or {SHARED: state.get("optimizer")}
        if set(saved) != set(self.optimizers):
            raise ValueError(f"trainer state: optimizers of {sorted(saved)}, this trainer's adapters are "
                             f"{sorted(self.optimizers)} (trainer.adapters changed since it was saved?)")
        for n, sd in saved.items():
            self.optimizers[n].load_state_dict(sd)
        set_rng_state(state["rng"])
        # a state saved before the schedule existed: AdamW's own step count is the same number
        adam = [int(s["step"]) for sd in saved.values() for s in sd["state"].values() if "step" in s]
        self.optimizer_steps = int(state.get("optimizer_steps", max(adam, default=0)))

    def lora_parameters(self) -> dict[str, torch.Tensor]:
        """Every trained LoRA matrix by name (all roles' adapters)."""
        ids = {id(p) for p in self.params}
        return {n: p for n, p in self.model.named_parameters() if id(p) in ids}

    # ---- the weights of older policies (loop.async_rollout) ------------------------------------------------
    def lora_snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of every LoRA matrix, by `lora_parameters` name: the policy as it is now, for `lora_weights` to put
        back while scoring what that policy sampled once the weights have moved on."""
        return {n: p.detach().clone() for n, p in self.lora_parameters().items()}

    def read_lora_weights(self, path: str | Path) -> dict[str, torch.Tensor]:
        """The LoRA matrices of the adapter saved in `path` (`write_adapter`'s layout: per role, one adapter in
        path/ROLE) by `lora_parameters` name, as `lora_snapshot` gives them."""
        out: dict[str, torch.Tensor] = {}
        params = self.lora_parameters()
        for name in self.role_params:
            where = Path(path) / name.removeprefix(ROLE) if self.roles else Path(path)
            saved = load_file(str(where / "adapter_model.safetensors"))
            for n in (n for n in params if f".{name}." in n):
                key = n.replace(f".{name}.", ".")  # peft saves a matrix without its adapter's name
                if key not in saved:
                    raise ValueError(f"{where}: no LoRA matrix {key} (an adapter of another model or config?)")
                out[n] = saved[key]
        return out

    @contextlib.contextmanager
    def lora_weights(self, weights: dict[str, torch.Tensor]) -> Iterator[None]:
        """Score under other LoRA weights (an older policy's: `lora_snapshot`, `read_lora_weights`): they are copied
        into the LoRA parameters for the block, and the current values are put back after it, bit for bit (no grad;
        the optimizer state is keyed by the parameters, so it is untouched)."""
        params = self.lora_parameters()
        if set(weights) != set(params):
            odd = sorted(set(weights) ^ set(params))
            raise ValueError(f"lora_weights: the weights do not match this trainer's LoRA matrices ({len(odd)} names "
                             f"differ, e.g. {odd[0]})")
        current = self.lora_snapshot()
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(current[n])
