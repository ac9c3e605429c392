"""Token trees: sequences that share their first tokens laid out as one prefix tree, computed once.

A decoder run over a tree as one row, each token attending to its ancestors only and positioned at its depth, gives
every node the hidden state it has in each sequence through it. The trainer's update (`trainer.prefix_tree`) and the
exact evaluation's scorer (integrations/exact_eval.py) both score many sequences with long common starts this way:
a game's rules and instructions, a seat's earlier turns, the same prompt with each legal action.
"""

from __future__ import annotations

import numpy as np
import torch


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def token_tree(sequences: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The sequences as a prefix tree of tokens: each node's token and parent (-1 at a root), nodes numbered in
    creation order (a parent before its children), and each sequence's path (its node at every position)."""
    children: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    paths: list[list[int]] = []
    for seq in sequences:
        node, path = -1, []
        for t in seq:
            child = children.get((node, t))
            if child is None:
                child = children[(node, t)] = len(tokens)
                tokens.append(t)
                parents.append(node)
            path.append(child)
            node = child
        paths.append(path)
    return tokens, parents, paths


TREE_ATTENTION = "stratagem_tree"


class TreeLayout:
    """A token tree cut into segments for attention: the nodes of one sequence that no earlier sequence made are
    consecutive in creation order and form a chain, so each segment's queries read the keys of its ancestors (the
    path to its attachment point) and then its own, causally. Attention then costs what each node's own path costs,
    not the square of the tree's size, and no tree-sized mask exists."""

    def __init__(self, parents: list[int], device: torch.device | str):
        starts = [i for i, p in enumerate(parents) if i == 0 or p != i - 1]
        ends = starts[1:] + [len(parents)]
        owner = np.zeros(len(parents), dtype=np.int64)
        path_of: list[np.ndarray] = []  # per segment: the nodes before it on its path (its ancestors)
        self.segments: list[tuple[int, int]] = []
        self.keys: list[torch.Tensor | None] = []  # per segment: the nodes its queries read (None: only its own)
        self.masks: list[torch.Tensor | None] = []  # per segment: which keys each query reads (None: causal)
        for s, (a, b) in enumerate(zip(starts, ends)):
            owner[a:b] = s
            p = parents[a]
            if p < 0:
                anc = np.zeros(0, dtype=np.int64)
            else:
                o = owner[p]
                anc = np.concatenate([path_of[o], np.arange(starts[o], p + 1)])
            path_of.append(anc)
            n = b - a
            self.segments.append((a, b))
            if not len(anc):  # a root segment is a plain causal sequence: SDPA's causal kernels (flash on a GPU)
                self.keys.append(None)
                self.masks.append(None)
                continue
            self.keys.append(torch.from_numpy(np.concatenate([anc, np.arange(a, b)])).to(device))
            causal = torch.ones((n, n), dtype=torch.bool).tril_()
            self.masks.append(torch.cat([torch.ones((n, len(anc)), dtype=torch.bool), causal], 1).to(device))


def tree_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   tree_layout: TreeLayout | None = None, **kwargs):
    """An attention function for transformers' AttentionInterface: SDPA, except when the forward is given a
    `tree_layout` (tree_hidden): then each segment of the tree attends to its ancestors' keys and its own."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if tree_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outs = []
    for (a, b), idx, mask in zip(tree_layout.segments, tree_layout.keys, tree_layout.masks):
        k = key[:, :, a:b] if idx is None else key.index_select(2, idx)
        v = value[:, :, a:b] if idx is None else value.index_select(2, idx)
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling,
            enable_gqa=gqa))
    return torch.cat(outs, 2).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TREE_ATTENTION, tree_attention)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)


def use_tree_attention(module: torch.nn.Module) -> bool:
    """Switch a model (or its decoder: they share the config) on SDPA to `tree_attention`, which is SDPA itself
    whenever a forward gets no tree, so nothing else changes. True when the model now reads trees by segments."""
    config = getattr(module, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        _register()
        config._attn_implementation = TREE_ATTENTION  # type: ignore[union-attr]
    return getattr(config, "_attn_implementation", None) == TREE_ATTENTION


def tree_hidden(decoder: torch.nn.Module, sequences: list[list[int]],
                device: torch.device | str) -> tuple[torch.Tensor, list[list[int]]]:
    """A decoder's last hidden states over the sequences laid out as one token tree (`token_tree`: one row, nodes in
    creation order) and each sequence's path through it. A node attends to itself and its ancestors and sits at its
    depth, so its hidden state is the one it has in every sequence through it; a backward sums those sequences'
    gradients into the one computation.

    A decoder on SDPA switches to `tree_attention` (SDPA itself whenever no tree is given, so nothing else changes),
    which reads the ancestors of each segment; others get the tree as a square mask over all its nodes."""
    tokens, parents, paths = token_tree(sequences)
    n = len(tokens)
    depth = np.zeros(n, dtype=np.int64)
    for i, p in enumerate(parents):  # parents precede their children
        if p >= 0:
            depth[i] = depth[p] + 1
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    positions = torch.from_numpy(depth)[None].to(device)
    if use_tree_attention(decoder):
        # a 4D mask passes the model's mask building untouched; tree_attention reads the layout instead
        stub = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)
        hidden = decoder(input_ids=ids, position_ids=positions, attention_mask=stub,
                         tree_layout=TreeLayout(parents, device)).last_hidden_state
        return hidden[0], paths
    allowed = np.zeros((n, n), dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            allowed[i] = allowed[p]
        allowed[i, i] = True
    dtype = next(decoder.parameters()).dtype  # eager and the others add the mask to the scores
    mask = torch.zeros((1, 1, n, n), dtype=dtype).masked_fill_(~torch.from_numpy(allowed)[None, None],
                                                               torch.finfo(dtype).min)
    hidden = decoder(input_ids=ids, position_ids=positions, attention_mask=mask.to(device)).last_hidden_state
    return hidden[0], paths


def tree_groups(sequences: list[list[int]], budget: int) -> list[list[int]]:
    """Indices of the sequences grouped, in token order, into trees of at most `budget` tokens each (a sequence
    longer than the budget alone). In token order a sequence's longest common prefix with those before it is its
    common prefix with the one just before it, so each adds its length minus that to the tree."""
    groups: list[list[int]] = []
    group: list[int] = []
    cost = 0
    prev: list[int] = []
    for i in sorted(range(len(sequences)), key=lambda i: sequences[i]):
        ids = sequences[i]
        new = len(ids) - common_prefix(prev, ids)
        if group and cost + new > budget:
            groups.append(group)
            group, cost, new = [], 0, len(ids)
        group.append(i)
        cost += new
        prev = ids
    if group:
        groups.append(group)
    return groups


__all__ = ["TREE_ATTENTION", "TreeLayout", "common_prefix", "token_tree", "tree_attention", "tree_groups",
           "tree_hidden", "use_tree_attention"]
