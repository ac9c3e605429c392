"""Shared prefixes in the update: the tokens several sequences of a micro-batch open with run once (as a token tree,
or the common opening through the key / value cache), and the log-probs and LoRA gradients equal the per-sequence
computation (on the real default model, with game-shaped prompts)."""

import math

import pytest
import torch

from stratagem.token_tree import TREE_ATTENTION, TreeLayout, token_tree, tree_hidden
from stratagem.training.losses import PPOConfig
from stratagem.training.samples import Act, Batch, Sample
from stratagem.training.trainer import LoRATrainer, TrainerConfig, shareable

RULES = {
    "tictactoe": "You are playing tic-tac-toe on a 3x3 board. Players alternate placing their mark in an empty "
                 "cell; three in a row, column or diagonal wins. Reply with the cell as <answer>(row,col)</answer>.",
    "kuhn_poker": "You are playing Kuhn poker with a three-card deck (J, Q, K). Each player antes one chip and gets "
                  "one card; you may pass or bet one chip. The higher card wins the pot at showdown. Reply with "
                  "<answer>Pass</answer> or <answer>Bet</answer>.",
    "mini_hanabi": "You are playing a cooperative card game with a partner. Play cards in order, give hints about "
                   "colours or ranks, or discard. Reply with one legal move as <answer>move</answer>.",
}


def _seq(a: list[int], trained_from: int) -> Sample:
    n = len(a) - trained_from
    return Sample(input_ids=a, positions=list(range(trained_from, len(a))), acts=[0] * n, old_logprobs=[0.0] * n)


def test_shareable_stops_before_the_first_trained_position():
    a, b = _seq([1, 2, 3, 4, 5, 6], 4), _seq([1, 2, 3, 4, 9, 9, 9], 5)
    # common prefix 1 2 3 4 (4 tokens), but a's first trained token (index 4) is predicted from index 3: share 3
    assert shareable(a, b) == 3
    assert shareable(b, _seq([1, 2, 7, 7, 7], 3)) == 2
    assert shareable(a, _seq([8, 2, 3, 4, 5], 4)) == 0


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _mixed_batch(tok) -> Batch:
    """Three games' openings (system line + rules), three to four sequences each with different boards and
    lengths; one tic-tac-toe sequence packed (two replies in one growing chat)."""
    def chat(game: str, state: str) -> list[int]:
        return tok.apply_chat_template([{"role": "system", "content": "You are a careful game player."},
                                        {"role": "user", "content": f"{RULES[game]}\n\nState: {state}\nYour move?"}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    acts, samples = [], []

    def add(game: str, prompt: list[int], replies: list[tuple[list[int], list[int]]]) -> None:
        s = Sample(input_ids=list(prompt))
        for extra, reply in replies:
            s.input_ids.extend(extra)
            a = len(acts)
            acts.append(Act(episode=a, turn=0, seat=0, game=game, role="p", n_tokens=len(reply)))
            s.positions.extend(range(len(s.input_ids), len(s.input_ids) + len(reply)))
            s.input_ids.extend(reply)
            s.acts.extend([a] * len(reply))
            s.old_logprobs.extend([math.nan] * len(reply))
        samples.append(s)

    boards = ["X . . / . O . / . . .", "X X . / . O . / O . .", ". . . / . . . / . . .", "X O X / . O . / . X ."]
    for k, board in enumerate(boards):
        reply = ids(f"<answer>({k % 3},{(k + 1) % 3})</answer>") + [tok.eos_token_id]
        more = [(ids("\nThe opponent moved. State: " + board[::-1] + "\nYour move?"), ids("<answer>(2,2)</answer>"))]
        add("tictactoe", chat("tictactoe", board), [([], reply)] + (more if k == 1 else []))
    for k, card in enumerate(["J", "Q", "K"]):
        history = " ".join(["Pass", "Bet"][: k])
        add("kuhn_poker", chat("kuhn_poker", f"your card {card}; betting so far: {history or 'none'}"),
            [([], ids(f"<answer>{['Pass', 'Bet', 'Bet'][k]}</answer>"))])
    for k, hand in enumerate(["R1 Y2", "Y1 Y1 R2"]):
        add("mini_hanabi", chat("mini_hanabi", f"partner holds {hand}; hints left {3 - k}"),
            [([], ids("<answer>Play card 1</answer>"))])
    return Batch(acts=acts, samples=samples)


def _trainer(model_path, shared: bool, dtype: str = "float32", tree: bool = True) -> LoRATrainer:
    tr = LoRATrainer(model_path, TrainerConfig(dtype=dtype, shared_prefix=shared, prefix_tree=tree, rank=4), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a LoRA that is not zero, so that the adapter's part of the forward is compared too
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return tr


def _run(tr: LoRATrainer, batch: Batch):
    lps: list = [None] * len(batch.samples)
    groups = list(tr.micro_batches(batch.samples))
    for mb in groups:
        out = tr.token_logprobs([batch.samples[i] for i in mb])
        sum(lp.sum() for lp in out).backward()
        for i, lp in zip(mb, out):
            lps[i] = lp.detach()
    with torch.no_grad():
        ref = tr.score(batch.samples, reference=True)
    grads = {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    return torch.cat(lps), torch.cat(ref), grads, groups


def test_token_tree_by_hand():
    tokens, parents, paths = token_tree([[1, 2, 3], [1, 2, 4], [1, 5], [1, 2, 3, 6], [7]])
    assert tokens == [1, 2, 3, 4, 5, 6, 7]
    assert parents == [-1, 0, 1, 1, 0, 2, -1]
    assert paths == [[0, 1, 2], [0, 1, 3], [0, 4], [0, 1, 2, 5], [6]]


def test_tree_layout_by_hand():
    # the tree of test_token_tree_by_hand: node 3 hangs off 1, node 4 off 0, node 5 off 2, node 6 is a second root
    layout = TreeLayout([-1, 0, 1, 1, 0, 2, -1], "cpu")
    assert layout.segments == [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
    keys = [None if k is None else k.tolist() for k in layout.keys]
    assert keys == [None, [0, 1, 3], [0, 4], [0, 1, 2, 5], None]
    assert layout.masks[0] is None and layout.masks[4] is None  # roots: plain causal attention
    assert layout.masks[1].tolist() == [[True, True, True]]
    assert layout.masks[3].tolist() == [[True, True, True, True]]
    # a two-node branch off the root: reads the root, then itself causally
    branch = TreeLayout([-1, 0, 1, 0, 3], "cpu")
    assert branch.segments == [(0, 3), (3, 5)] and branch.keys[1].tolist() == [0, 3, 4]
    assert branch.masks[1].tolist() == [[True, True, False], [True, True, True]]


def test_tree_attention_equals_the_square_mask_values_and_gradients(tiny_model_path):
    """The segment attention (SDPA models) against the same tree as a square additive mask (eager), on a tiny
    model: hidden states and the gradients of a loss over every node."""
    from transformers import AutoModelForCausalLM

    seqs = [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9, 9], [1, 2, 7], [1, 2, 3, 4, 5, 6, 8], [11, 12], [1, 2, 7, 10]]
    out = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32, attn_implementation=impl)
        decoder = model.get_decoder()
        hidden, paths = tree_hidden(decoder, seqs, "cpu")
        assert decoder.config._attn_implementation == (TREE_ATTENTION if impl == "sdpa" else "eager")
        (hidden * torch.linspace(-1, 1, hidden.shape[-1])).sum().backward()
        out[impl] = hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for s, path in zip(seqs, paths):  # every node as in its own sequence
            alone = decoder(input_ids=torch.tensor([s])).last_hidden_state[0]
            assert torch.allclose(hidden[path], alone, atol=1e-5)
    assert torch.allclose(out["sdpa"][0], out["eager"][0], atol=1e-5)
    assert out["sdpa"][1].keys() == out["eager"][1].keys() and out["sdpa"][1]
    for n, g in out["sdpa"][1].items():
        assert torch.allclose(g, out["eager"][1][n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("tree", [True, False], ids=["tree", "opening"])
def test_shared_prefix_equals_the_per_sequence_computation_fp32(model_path, tokenizer, tree):
    batch = _mixed_batch(tokenizer)
    shared, flat = _trainer(model_path, True, tree=tree), _trainer(model_path, False)
    groups = list(shared.micro_batches(batch.samples))
    if tree:  # the whole batch is one tree within the budget: the system line once, each game's rules once
        assert len(groups) == 1 and sorted(groups[0]) == list(range(len(batch.samples)))
        tokens, _, _ = token_tree([s.input_ids for s in batch.samples])
        assert len(tokens) < batch.n_input_tokens // 2
    else:
        # micro-batches of one game each (their openings part after the common system line); the packed
        # tic-tac-toe sequence, much longer, costs less on its own than padding the other three to its length
        games = sorted([batch.acts[batch.samples[i].acts[0]].game for i in g] for g in groups)
        assert games == [["kuhn_poker"] * 3, ["mini_hanabi"] * 2, ["tictactoe"], ["tictactoe"] * 3]
        for g in groups[1:] if len(groups[0]) == 1 else groups:
            if len(g) > 1:
                assert min(shareable(batch.samples[g[0]], batch.samples[i]) for i in g[1:]) > 40  # system + rules
    lp_s, ref_s, grad_s, _ = _run(shared, batch)
    # the per-sequence computation, in the same micro-batches (flat's own grouping is by length only)
    flat.micro_batches = lambda samples, indices=None: iter(groups)
    lp_f, ref_f, grad_f, _ = _run(flat, batch)
    assert lp_s.shape == lp_f.shape == (batch.n_trained_tokens,)
    # fp32 rounds a differently shaped matmul differently: today's flat path already moves by ~1e-5 between a
    # batch and one sequence at a time (measured: 1.2e-5); the shared path stays within that and below 1e-4
    with torch.no_grad():
        alone = torch.cat([flat.token_logprobs([batch.samples[i]])[0] for g in groups for i in g])
        batched = torch.cat([lp for g in groups for lp in flat.token_logprobs([batch.samples[i] for i in g])])
    noise = float((alone - batched).abs().max())
    for a, b in ((lp_s, lp_f), (ref_s, ref_f)):
        assert float((a - b).abs().max()) <= min(max(3 * noise, 1e-5), 1e-4), (float((a - b).abs().max()), noise)
    assert not torch.allclose(lp_f, ref_f, atol=1e-3)  # the adapter is in the policy pass and not in the reference
    rel = {n: float((grad_s[n] - grad_f[n]).norm() / grad_f[n].norm()) for n in grad_f}
    assert max(rel.values()) <= 1e-3, max(rel.items(), key=lambda kv: kv[1])
    assert all(float(grad_f[n].norm()) > 0 for n in grad_f)


@pytest.mark.parametrize("tree", [True, False], ids=["tree", "opening"])
def test_shared_prefix_in_bf16_is_within_the_layout_noise_of_the_flat_path(model_path, tokenizer, tree):
    """bf16 rounds each differently shaped matmul differently: today's flat path already differs between a batch and
    one sequence at a time; the shared path stays within a small multiple of that difference."""
    batch = _mixed_batch(tokenizer)
    tr = _trainer(model_path, True, dtype="bfloat16", tree=tree)
    groups = list(tr.micro_batches(batch.samples))
    with torch.no_grad():
        shared = [tr.token_logprobs([batch.samples[i] for i in g]) for g in groups]
        tr.config.shared_prefix = False
        flat = [tr.token_logprobs([batch.samples[i] for i in g]) for g in groups]
        alone = [[tr.token_logprobs([batch.samples[i]])[0] for i in g] for g in groups]
    cat = lambda xs: torch.cat([t.float() for x in xs for t in x])  # noqa: E731
    noise = float((cat(flat) - cat(alone)).abs().max())
    assert float((cat(shared) - cat(flat)).abs().max()) <= max(3 * noise, 1e-4)


def test_the_budget_counts_the_shared_part_once(model_path, tokenizer):
    batch = _mixed_batch(tokenizer)
    ttt = [i for i, s in enumerate(batch.samples)  # the three unpacked tic-tac-toe sequences
           if batch.acts[s.acts[0]].game == "tictactoe" and len(set(s.acts)) == 1]
    assert len(ttt) == 3
    longest = max(len(batch.samples[i].input_ids) for i in ttt)
    share = min(shareable(batch.samples[ttt[0]], batch.samples[i]) for i in ttt)
    budget = share + len(ttt) * (longest - share)  # all three fit when the opening counts once ...
    assert budget < len(ttt) * longest  # ... though padded x count would not
    tr = _trainer(model_path, True, tree=False)
    tr.config.micro_batch_tokens = budget
    assert any(sorted(g) == sorted(ttt) for g in tr.micro_batches(batch.samples, ttt))
    tr.config.shared_prefix = False
    assert all(len(g) < len(ttt) for g in tr.micro_batches(batch.samples, ttt))


def test_the_tree_budget_counts_each_tree_token_once(model_path, tokenizer):
    batch = _mixed_batch(tokenizer)
    size = len(token_tree([s.input_ids for s in batch.samples])[0])
    tr = _trainer(model_path, True)
    tr.config.micro_batch_tokens = size
    assert [sorted(g) for g in tr.micro_batches(batch.samples)] == [list(range(len(batch.samples)))]
    tr.config.micro_batch_tokens = size - 1  # one token short: the batch splits, each part within the budget
    groups = list(tr.micro_batches(batch.samples))
    assert len(groups) == 2
    assert all(len(token_tree([batch.samples[i].input_ids for i in g])[0]) <= size - 1 for g in groups)


def test_the_first_step_takes_its_old_logprobs_from_its_own_forward(model_path, tokenizer):
    """With two mini-batches, the old-log-prob pass scores only the second one's sequences; the first step's
    ratio is then exactly 1 and every pass's time is in the metrics."""
    batch = _mixed_batch(tokenizer)
    tr = LoRATrainer(model_path, TrainerConfig(dtype="float32", minibatches=2), seed=0)
    scored = []
    real = tr.token_logprobs

    def spy(samples, *, reference=False, entropy=None):
        if not torch.is_grad_enabled() and not reference:
            scored.extend(id(s) for s in samples)
        return real(samples, reference=reference, entropy=entropy)

    tr.token_logprobs = spy
    stats = tr.ppo_step(batch, [1.0 if i % 2 else -1.0 for i in range(len(batch.acts))], PPOConfig())
    second = {id(batch.samples[i]) for i in tr.mini_batches(len(batch.samples))[1]}
    assert set(scored) == second and len(scored) == len(second)
    assert stats["first_step_abs_log_ratio"] == 0.0 and stats["clip_frac_first_step"] == 0.0
    assert all(stats[k] > 0 for k in ("ref_s", "old_s", "policy_s"))
    assert stats["ref_s"] + stats["old_s"] + stats["policy_s"] <= stats["update_s"] + 1e-6
