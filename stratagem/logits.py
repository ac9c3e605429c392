"""The output layer and the log-probs of chosen tokens, in chunks of rows.

A model with a large vocabulary makes the logits the biggest tensor of a training step (Qwen3: 151,936 floats per
token, in fp32 for the softmax: 4096 trained tokens are 2.5 GB, and autograd keeps them for the backward). Here the
rows go through the output layer a chunk at a time; with gradients on, each chunk is checkpointed, so only its input
rows are kept and its logits are recomputed in the backward: at most one chunk's logits exist at any moment.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each row's softmax, in nats: logsumexp(z) - sum softmax(z) z. Hand check: logits (0, ln 3) give
    p = (1/4, 3/4) and H = ln 4 - (3/4) ln 3 = 0.5623351."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def _chunk(head: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, targets: torch.Tensor,
           temperature: float, entropy: bool) -> torch.Tensor:
    logits = head(rows).float()
    if temperature != 1.0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]
    return torch.stack([lp, token_entropy(logits)]) if entropy else lp[None]


def head_logprobs(head: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, targets: torch.Tensor, *,
                  temperature: float = 1.0, chunk: int = 0,
                  entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(head(rows) / temperature)[targets] per row, and the softmax's entropy per row when asked.
    `chunk` rows at a time (0: all at once); when there are more rows than that and gradients are on, each chunk is
    recomputed in the backward instead of keeping its logits. `head` may be the identity over ready logits."""
    n = rows.shape[0]
    if chunk <= 0 or n <= chunk:
        out = _chunk(head, rows, targets, temperature, entropy)
    else:
        keep = torch.is_grad_enabled() and rows.requires_grad
        parts = []
        for i in range(0, n, chunk):
            args = (head, rows[i:i + chunk], targets[i:i + chunk], temperature, entropy)
            parts.append(checkpoint(_chunk, *args, use_reentrant=False) if keep else _chunk(*args))
        out = torch.cat(parts, dim=1)
    return out[0], (out[1] if entropy else None)


__all__ = ["head_logprobs", "token_entropy"]
