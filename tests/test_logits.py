"""stratagem/logits.py: the output layer's log-probs in chunks equal the all-at-once computation, values and
gradients, and the chunks' logits are not kept for the backward."""

import math

import pytest
import torch

from stratagem.logits import head_logprobs


def test_head_logprobs_hand_example():
    # identity head over ready logits (0, ln 3): p = (1/4, 3/4); at temperature 2 the logits are (0, ln 3 / 2), so
    # p = (1, sqrt 3) / (1 + sqrt 3)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    lp, ent = head_logprobs(torch.nn.Identity(), logits, torch.tensor([1, 0]), entropy=True)
    assert lp.tolist() == pytest.approx([math.log(0.75), math.log(0.25)], abs=1e-6)
    assert ent.tolist() == pytest.approx([math.log(4) - 0.75 * math.log(3)] * 2, abs=1e-6)
    lp2, none = head_logprobs(torch.nn.Identity(), logits, torch.tensor([1, 0]), temperature=2.0)
    s3 = math.sqrt(3)
    assert none is None and lp2.tolist() == pytest.approx([math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))], abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunks_equal_all_at_once_values_and_gradients(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    rows = torch.randn(10, 16, requires_grad=True)
    targets = torch.randint(0, 50, (10,))
    out = {}
    for c in (0, chunk):
        head.zero_grad()
        rows.grad = None
        lp, ent = head_logprobs(head, rows, targets, temperature=0.7, chunk=c, entropy=True)
        (lp.sum() + 0.1 * ent.sum()).backward()
        out[c] = lp.detach(), ent.detach(), rows.grad.clone(), head.weight.grad.clone()
    for a, b in zip(out[0], out[chunk]):
        assert torch.allclose(a, b, atol=1e-6)


def test_chunked_backward_recomputes_instead_of_keeping_logits():
    """Saved tensors of the graph: all at once keeps the (rows x vocab) logits; in chunks only the rows are kept."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 1000, bias=False)
    rows = torch.randn(64, 8, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))

    def saved_elements(chunk: int) -> int:
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            head_logprobs(head, rows, targets, chunk=chunk)
        return max(sizes)

    assert saved_elements(0) >= 64 * 1000
    assert saved_elements(16) < 16 * 1000
