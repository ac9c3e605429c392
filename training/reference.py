"""The reference policy's log-probs from an inference server instead of the trainer (`ppo.reference: endpoint`).

The KL term needs log pi_ref at every trained token: a no-grad pass of the base model over every sequence, a third
of the update's forwards. An idle server that serves the unmodified base model computes the same numbers as vLLM's
prompt log-probs (`/v1/completions` with the sequence's token ids as the prompt and `prompt_logprobs`), on other
cores or another GPU. vLLM reports them from the raw logits (its default `logprobs_mode`), so the option needs the
trainer to score untempered log-probs too (`trainer.temper_logprobs` off, or sampling temperature 1); the run
config refuses it otherwise. The server must not be the run's own when the loop merges the policy into the served
weights (there `base` is the current policy, not the reference).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import torch

from stratagem.training.samples import Sample


class ReferenceEndpointError(RuntimeError):
    """The reference server's answer cannot give a sample's log-probs (unreachable, refused, or a token missing)."""


async def _one(http: httpx.AsyncClient, url: str, model: str, sample: Sample) -> torch.Tensor:
    body = {"model": model, "prompt": list(sample.input_ids), "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": 0}
    try:
        resp = await http.post(url, json=body)
        resp.raise_for_status()
        prompt = resp.json()["choices"][0]["prompt_logprobs"]
        return torch.tensor([float(prompt[p][str(sample.input_ids[p])]["logprob"]) for p in sample.positions],
                            dtype=torch.float32)
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ReferenceEndpointError(f"ppo.reference endpoint: {url} (model {model!r}) gave no prompt log-probs for "
                                     f"a {len(sample.input_ids)}-token sequence: {e!r}") from e


async def _all(samples: Sequence[Sample], base_url: str, model: str, api_key: str,
               concurrency: int) -> list[torch.Tensor]:
    url = base_url.rstrip("/") + "/completions"
    limit = asyncio.Semaphore(max(1, concurrency))
    async with httpx.AsyncClient(timeout=600.0, headers={"Authorization": f"Bearer {api_key}"}) as http:
        async def bounded(s: Sample) -> torch.Tensor:
            async with limit:
                return await _one(http, url, model, s)

        return list(await asyncio.gather(*(bounded(s) for s in samples)))


def endpoint_logprobs(samples: Sequence[Sample], base_url: str, model: str = "base", api_key: str = "EMPTY",
                      concurrency: int = 1) -> list[torch.Tensor]:
    """log pi_ref at each sample's trained positions (one float32 tensor per sample, as `LoRATrainer.score` gives),
    from the server at `base_url` (an OpenAI-compatible vLLM server) serving the reference as `model`. One request at
    a time by default: vLLM's LoRA-enabled CPU engine dies on a batch that mixes prompt log-probs with other rows
    (vllm-project/vllm#29955; the exact evaluation's scorer keeps the same rule)."""
    return asyncio.run(_all(samples, base_url, model, api_key, concurrency))
