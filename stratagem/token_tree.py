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


def tree_hidden(decoder: torch.nn.Module, sequences: list[list[int]],
                device: torch.device | str) -> tuple[torch.Tensor, list[list[int]]]:
    """A decoder's last hidden states over the sequences laid out as one token tree (`token_tree`: one row, nodes in
    creation order) and each sequence's path through it. A node attends to itself and its ancestors and sits at its
    depth, so its hidden state is the one it has in every sequence through it; a backward sums those sequences'
    gradients into the one computation."""
    tokens, parents, paths = token_tree(sequences)
    n = len(tokens)
    allowed = np.zeros((n, n), dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    for i, p in enumerate(parents):  # parents precede their children
        if p >= 0:
            allowed[i] = allowed[p]
            depth[i] = depth[p] + 1
        allowed[i, i] = True
    keep = torch.from_numpy(allowed)[None, None]
    if getattr(getattr(decoder, "config", None), "_attn_implementation", None) == "sdpa":
        mask = keep  # SDPA reads a boolean mask (True: attend), and its CPU kernels run one faster than an additive
    else:  # eager and the others add the mask to the scores: an additive one in the compute dtype
        dtype = next(decoder.parameters()).dtype
        mask = torch.zeros((1, 1, n, n), dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)
    ids = torch.tensor([tokens], dtype=torch.long, device=device)
    hidden = decoder(input_ids=ids, position_ids=torch.from_numpy(depth)[None].to(device),
                     attention_mask=mask.to(device)).last_hidden_state
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


__all__ = ["common_prefix", "token_tree", "tree_groups", "tree_hidden"]
