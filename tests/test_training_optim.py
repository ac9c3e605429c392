"""MARSHAL's optimiser settings as trainer fields: the lr schedule (cosine with warmup, progress counted in
iterations) and its resume, AdamW's betas / eps, the optimizer step size in sequences, untempered log-probs and
LoRA on every linear layer. On the tiny random model of training_fakes, in float32."""

import math

import pytest
import torch
from training_fakes import fake_episode

from stratagem.config import ConfigError, from_dict, parse_flags
from stratagem.training.cli import train_parser
from stratagem.training.losses import PPOConfig
from stratagem.training.samples import build_batch
from stratagem.training.trainer import LoRATrainer, TrainerConfig, scheduled_lr


@pytest.fixture(scope="module")
def episodes():
    return [fake_episode("tictactoe", s, "base") for s in range(4)]


def _batch(eps):
    batch = build_batch(eps, lambda i, j: True)
    adv = [1.0 if eps[a.episode].turns[a.turn].reward > 0 else -1.0 for a in batch.acts]
    return batch, adv


def _cfg(**kw):
    return TrainerConfig(dtype="float32", rank=4, alpha=8, **kw)


def _record_lrs(trainer):
    lrs = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    return lrs


def _snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.lora_parameters().items()}


COSINE = dict(lr=1e-3, lr_schedule="cosine", warmup_steps=2, minibatches=3)
# K = 2 iterations of S = 3 steps, warmup 2: step g of iteration k at p = (k - 1 + s / 3) / 2 gets
# lr * min(1, g / 2) * (1 + cos(pi p)) / 2
COSINE_LRS = [0.0,                                  # g 0, p 0: the first warmup step
              0.5 * 1e-3 * (1 + math.sqrt(3) / 2) / 2,  # g 1, p 1/6: half warmed up
              1e-3 * (1 + 0.5) / 2,                 # g 2, p 1/3
              1e-3 * 0.5,                           # g 3, p 1/2: iteration 2 starts halfway down
              1e-3 * (1 - 0.5) / 2,                 # g 4, p 2/3
              1e-3 * (1 - math.sqrt(3) / 2) / 2]    # g 5, p 5/6


def test_cosine_schedule_sets_each_optimizer_steps_lr(tiny, episodes):
    batch, adv = _batch(episodes)
    assert len(batch.samples) == 8
    t = LoRATrainer(tiny, _cfg(**COSINE), seed=0, total_iterations=2)
    lrs = _record_lrs(t)
    outs = [t.ppo_step(batch, adv, PPOConfig(), iteration=k) for k in (1, 2)]
    assert len(lrs) == 6 and t.optimizer_steps == 6
    for got, want in zip(lrs, COSINE_LRS):
        assert abs(got - want) < 1e-12
    assert [o["lr"] for o in outs] == [lrs[2], lrs[5]]  # the metrics report the iteration's last lr


def test_scheduled_lr_ends_at_min_lr_and_constant_keeps_lr():
    c = TrainerConfig(lr=1e-3, lr_schedule="cosine", min_lr=1e-4)
    assert scheduled_lr(c, 5, 0.0) == 1e-3 and abs(scheduled_lr(c, 5, 0.5) - 5.5e-4) < 1e-12
    assert abs(scheduled_lr(c, 5, 1.0) - 1e-4) < 1e-12 and scheduled_lr(c, 5, 1.5) == scheduled_lr(c, 5, 1.0)
    const = TrainerConfig(lr=1e-3)
    assert [scheduled_lr(const, g, 0.7) for g in range(3)] == [1e-3] * 3
    warm = TrainerConfig(lr=1e-3, warmup_steps=4)  # warmup works under the constant schedule too
    assert [scheduled_lr(warm, g, 0.0) for g in range(6)] == [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]


def test_constant_schedule_steps_at_lr_without_progress(tiny, episodes):
    batch, adv = _batch(episodes)
    t = LoRATrainer(tiny, _cfg(lr=1e-3), seed=0)
    lrs = _record_lrs(t)
    t.ppo_step(batch, adv, PPOConfig())
    assert lrs == [1e-3, 1e-3]


def test_cosine_needs_total_iterations_and_the_iteration(tiny, episodes):
    batch, adv = _batch(episodes)
    with pytest.raises(ValueError, match="total_iterations"):
        LoRATrainer(tiny, _cfg(**COSINE), seed=0)
    t = LoRATrainer(tiny, _cfg(**COSINE), seed=0, total_iterations=2)
    with pytest.raises(ValueError, match="iteration=k"):
        t.ppo_step(batch, adv, PPOConfig())
    assert t.optimizer_steps == 0


def test_schedule_resumes_bit_identical_through_state_dict(tiny, episodes, tmp_path):
    """Iteration 1, save (adapter + state_dict through a file), a fresh trainer resumes iteration 2: the same lrs
    and weights as an uninterrupted run; a state saved before `optimizer_steps` existed resumes the same way (the
    count is read from AdamW's step)."""
    batch, adv = _batch(episodes)
    ref = LoRATrainer(tiny, _cfg(**COSINE), seed=0, total_iterations=2)
    ref_lrs = _record_lrs(ref)
    for k in (1, 2):
        ref.ppo_step(batch, adv, PPOConfig(), iteration=k)

    first = LoRATrainer(tiny, _cfg(**COSINE), seed=0, total_iterations=2)
    first.ppo_step(batch, adv, PPOConfig(), iteration=1)
    adapter = first.save_adapter(tmp_path / "iter-1")
    torch.save(first.state_dict(), tmp_path / "state.pt")
    assert first.state_dict()["optimizer_steps"] == 3
    for old_file in (False, True):
        state = torch.load(tmp_path / "state.pt", weights_only=False)
        if old_file:
            del state["optimizer_steps"]
        resumed = LoRATrainer(tiny, _cfg(**COSINE), seed=0, total_iterations=2, adapter_path=adapter)
        resumed.load_state_dict(state)
        assert resumed.optimizer_steps == 3
        lrs = _record_lrs(resumed)
        resumed.ppo_step(batch, adv, PPOConfig(), iteration=2)
        assert lrs == ref_lrs[3:]
        a, b = _snapshot(resumed), _snapshot(ref)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_sequences_per_step_sets_the_optimizer_step_size(tiny, episodes):
    t = LoRATrainer(tiny, _cfg(sequences_per_step=3, minibatches=5), seed=0)
    assert t.mini_batches(8) == [[0, 3, 6], [1, 4, 7], [2, 5]]  # ceil(8 / 3) steps, minibatches ignored
    assert t.mini_batches(9) == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert t.mini_batches(3) == [[0, 1, 2]] and t.mini_batches(1) == [[0]]
    assert t.mini_batches(24) == [list(range(g, 24, 8)) for g in range(8)]
    # the same groups as minibatches=3, so the same loss scaling (x group count) and the same update
    batch, adv = _batch(episodes)
    fixed = LoRATrainer(tiny, _cfg(minibatches=3), seed=0)
    assert fixed.mini_batches(8) == t.mini_batches(8)
    for trainer in (t, fixed):
        trainer.ppo_step(batch, adv, PPOConfig())
    assert t.optimizer_steps == fixed.optimizer_steps == 3
    a, b = _snapshot(t), _snapshot(fixed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_betas_eps_and_weight_decay_reach_adamw(tiny):
    default = LoRATrainer(tiny, _cfg(), seed=0).optimizer.param_groups[0]
    torch_default = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).param_groups[0]
    assert (default["betas"], default["eps"]) == (torch_default["betas"], torch_default["eps"])  # today's AdamW
    assert default["weight_decay"] == 0.0
    marshal = LoRATrainer(tiny, _cfg(betas=[0.9, 0.95], adam_eps=1e-6, weight_decay=0.05), seed=0)
    group = marshal.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6 and group["weight_decay"] == 0.05


def test_optimizer_fields_are_checked_and_have_flags(tmp_path):
    assert from_dict(TrainerConfig, {"betas": [0.9, 0.95]}).betas == [0.9, 0.95]
    for bad in ([0.9], [0.9, 0.95, 0.99], [0.9, 1.0]):
        with pytest.raises(ConfigError, match=r"betas: must be two numbers in \[0, 1\)"):
            from_dict(TrainerConfig, {"betas": bad})
    with pytest.raises(ConfigError, match="lr_schedule: must be one of constant, cosine"):
        from_dict(TrainerConfig, {"lr_schedule": "linear"})
    with pytest.raises(ConfigError, match="min_lr: must be <= lr"):
        from_dict(TrainerConfig, {"lr": 1e-6, "min_lr": 1e-5})
    overrides, _ = parse_flags(train_parser(), ["--trainer.betas", "0.9,0.95", "--trainer.lr-schedule", "cosine",
                                                "--trainer.warmup-steps", "10", "--trainer.sequences-per-step", "8",
                                                "--trainer.temper-logprobs", "false",
                                                "--trainer.target-modules", "all-linear", "--out", str(tmp_path)])
    assert overrides == {"trainer": {"betas": [0.9, 0.95], "lr_schedule": "cosine", "warmup_steps": 10,
                                     "sequences_per_step": 8, "temper_logprobs": False,
                                     "target_modules": ["all-linear"]}}


def test_untempered_logprobs_are_log_softmax_of_the_raw_logits(tiny, episodes):
    batch, _ = _batch(episodes[:1])
    s = batch.samples[0]
    raw = LoRATrainer(tiny, _cfg(temper_logprobs=False), seed=0, temperature=0.5)
    tempered = LoRATrainer(tiny, _cfg(), seed=0, temperature=0.5)
    with torch.no_grad():
        logits = raw.model(input_ids=torch.tensor([s.input_ids])).logits[0].float()
    pos, ids = torch.tensor(s.positions), torch.tensor(s.input_ids)
    want = torch.log_softmax(logits[pos - 1], -1).gather(-1, ids[pos][:, None])[:, 0]
    assert torch.allclose(raw.score([s])[0], want, atol=1e-6)
    hot = torch.log_softmax(logits[pos - 1] / 0.5, -1).gather(-1, ids[pos][:, None])[:, 0]
    assert torch.allclose(tempered.score([s])[0], hot, atol=1e-6) and not torch.allclose(hot, want, atol=1e-3)


def test_all_linear_puts_lora_on_every_linear_layer_and_trains_it(tiny, episodes):
    batch, adv = _batch(episodes)
    t = LoRATrainer(tiny, _cfg(target_modules=["all-linear"], lr=1e-2, minibatches=2), seed=0)
    before = _snapshot(t)
    modules = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in before}
    assert modules == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(before) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B); not the output head
    t.ppo_step(batch, adv, PPOConfig())
    after = _snapshot(t)
    assert [n for n in before if torch.equal(before[n], after[n])] == []


def test_token_entropy_hand_check():
    """logits (0, ln 3): p = (1/4, 3/4), H = ln 4 - (3/4) ln 3 = 0.5623351; uniform over 8: ln 8."""
    from stratagem.logits import token_entropy

    h = token_entropy(torch.tensor([[0.0, math.log(3.0)], [1.0] * 2]))
    assert h.tolist() == pytest.approx([0.5623351, math.log(2)], abs=1e-6)
    assert float(token_entropy(torch.zeros(1, 8))[0]) == pytest.approx(math.log(8), abs=1e-6)


def test_entropy_bonus_subtracts_coef_times_the_aggregated_entropy(tiny, episodes):
    """MARSHAL's fixed-opponent runs (entropy_loss_coef 0.01; roll/pipeline/base_worker.py loss_func: total_loss -=
    coef x agg_loss(entropy) with the pg loss's aggregation). One optimizer step (minibatches 1) from the same
    weights: the loss with the bonus is the loss without it minus coef x the token-mean entropy, which equals the
    entropy of the model's softmax at the trained positions computed directly; and the step moves elsewhere."""
    from stratagem.logits import token_entropy

    batch, adv = _batch(episodes[:2])
    plain = LoRATrainer(tiny, _cfg(minibatches=1), seed=0)
    bonus = LoRATrainer(tiny, _cfg(minibatches=1), seed=0)
    with torch.no_grad():  # before any step: LoRA B is 0, so the adapter model is the base model
        direct = []
        for s in batch.samples:
            logits = plain.model(input_ids=torch.tensor([s.input_ids])).logits[0].float()
            direct.append(token_entropy(logits[torch.tensor(s.positions) - 1]))
        want = float(torch.cat(direct).mean())
    s0 = plain.ppo_step(batch, adv, PPOConfig(aggregation="token"))
    s1 = bonus.ppo_step(batch, adv, PPOConfig(aggregation="token", entropy_coef=0.5))
    assert "entropy" not in s0 and s1["entropy"] == pytest.approx(want, abs=1e-5) and want > 0.1
    assert s1["loss"] == pytest.approx(s0["loss"] - 0.5 * want, abs=1e-5)
    a, b = _snapshot(plain), _snapshot(bonus)
    assert any(not torch.allclose(a[n], b[n]) for n in a)


@pytest.mark.parametrize("tree", [True, False], ids=["tree", "padded"])
def test_the_output_layer_in_chunks_trains_like_all_at_once(tiny, episodes, tree):
    """trainer.logit_chunk_rows 2 (every micro-batch has more trained positions: each chunk's logits recomputed in
    the backward) against 0 (all at once): the same log-probs, entropies and, after one step, the same weights."""
    batch, adv = _batch(episodes)
    trainers = {c: LoRATrainer(tiny, _cfg(minibatches=1, logit_chunk_rows=c, prefix_tree=tree), seed=0) for c in (0, 2)}
    with torch.no_grad():
        ents: dict[int, list] = {0: [], 2: []}
        lps = {c: tr.token_logprobs(batch.samples, entropy=ents[c]) for c, tr in trainers.items()}
    assert sum(len(s.positions) for s in batch.samples) > 2
    for a, b in zip(lps[0] + ents[0], lps[2] + ents[2]):
        assert torch.allclose(a, b, atol=1e-6)
    for tr in trainers.values():
        tr.ppo_step(batch, adv, PPOConfig(aggregation="token", entropy_coef=0.1))
    a, b = _snapshot(trainers[0]), _snapshot(trainers[2])
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert any(not torch.allclose(a[n], p) for n, p in _snapshot(LoRATrainer(tiny, _cfg(), seed=0)).items())
