"""ppo.reference endpoint: the KL's reference log-probs from a vLLM server of the base model instead of the trainer's
no-grad pass; checked against the trainer's own reference on the real server, and the config's refusals."""

import math

import pytest
import torch

from stratagem.config import ConfigError
from stratagem.training.losses import PPOConfig
from stratagem.training.objectives import Targets, get_loss
from stratagem.training.reference import ReferenceEndpointError, endpoint_logprobs
from stratagem.training.run_config import RunConfig
from stratagem.training.samples import Act, Batch, Sample
from stratagem.training.trainer import LoRATrainer, TrainerConfig


def test_endpoint_reference_needs_a_url_and_untempered_scoring():
    with pytest.raises(ConfigError, match="ppo.reference_url"):
        RunConfig.from_dict({"ppo": {"reference": "endpoint"}})
    with pytest.raises(ConfigError, match="temper_logprobs"):
        RunConfig.from_dict({"ppo": {"reference": "endpoint", "reference_url": "http://127.0.0.1:9/v1"}})
    cfg = RunConfig.from_dict({"ppo": {"reference": "endpoint", "reference_url": "http://127.0.0.1:9/v1"},
                               "trainer": {"temper_logprobs": False}})
    assert cfg.ppo.reference == "endpoint"


def test_an_unreachable_reference_server_is_named_in_the_error():
    s = Sample(input_ids=[1, 2, 3], positions=[2], acts=[0], old_logprobs=[0.0])
    with pytest.raises(ReferenceEndpointError, match="127.0.0.1:9"):
        endpoint_logprobs([s], "http://127.0.0.1:9/v1")


def _batch(tok) -> Batch:
    acts, samples = [], []
    for k, (state, reply) in enumerate([("X . . / . O . / . . .", "<answer>(2,2)</answer>"),
                                        ("your card K; betting so far: Pass", "<answer>Bet</answer>"),
                                        ("partner holds R1 Y2; hints left 2", "<answer>Play card 1</answer>")]):
        prompt = tok.apply_chat_template([{"role": "system", "content": "You are a careful game player."},
                                          {"role": "user", "content": f"State: {state}\nYour move?"}],
                                         add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = tok(reply, add_special_tokens=False)["input_ids"]
        acts.append(Act(episode=k, turn=0, seat=0, game="g", role="p", n_tokens=len(ids)))
        samples.append(Sample(input_ids=list(prompt) + ids, positions=list(range(len(prompt), len(prompt) + len(ids))),
                              acts=[k] * len(ids), old_logprobs=[math.nan] * len(ids)))
    return Batch(acts=acts, samples=samples)


@pytest.mark.vllm
def test_the_servers_reference_equals_the_trainers(vllm_server, model_path):
    from transformers import AutoTokenizer

    batch = _batch(AutoTokenizer.from_pretrained(model_path))
    tr = LoRATrainer(model_path, TrainerConfig(dtype="float32", temper_logprobs=False, rank=4), seed=0)
    with torch.no_grad():  # a policy away from the base model: the reference must not be the policy
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ours = torch.cat(tr.score(batch.samples, reference=True))
    policy = torch.cat(tr.score(batch.samples))
    cfg = PPOConfig(reference="endpoint", reference_url=vllm_server.base_url)
    state = get_loss("ppo")(cfg).prepare(tr, batch, Targets(advantages=[1.0] * len(batch.acts)))
    theirs = torch.cat(state["ref"])
    assert theirs.shape == ours.shape == (batch.n_trained_tokens,)
    # vLLM's fp32 CPU kernels against transformers' fp32: the same numbers up to summation order
    assert float((theirs - ours).abs().max()) < 2e-3, (theirs, ours)
    assert float((theirs - policy).abs().max()) > 1e-2  # and the policy's would have been told apart
