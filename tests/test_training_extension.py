"""A new advantage estimator and a new loss are one registered object each: registered here, outside the package,
then validated by the run config and trained through the trainer's one update path on the real default model."""

import pytest
import torch
from training_fakes import two_games

from stratagem.training.advantages import register_advantage, unregister_advantage
from stratagem.training.loop import RunConfig, update
from stratagem.training.objectives import Objective, register_loss, unregister_loss
from stratagem.training.trainer import LoRATrainer, TrainerConfig


@pytest.fixture
def registered():
    @register_advantage("sign_of_return")
    def sign(episodes, learner, options, state):
        return [[(1.0 if ep.returns[t.seat] > 0 else -1.0) for t in ep.turns] for ep in episodes]

    @register_loss("reinforce")
    class Reinforce(Objective):
        """-A log pi(token), averaged over the batch's tokens."""

        def loss(self, trainer, batch, mb, logps, state, first_step):
            acts = [a for i in mb for a in batch.samples[i].acts]
            adv = torch.tensor([state["targets"].advantages[a] for a in acts])
            loss = -(adv * torch.cat(logps).float().cpu()).sum() / batch.n_trained_tokens
            return loss, {"loss": float(loss.detach()), "scored_tokens": float(sum(len(x) for x in logps))}

    yield
    unregister_advantage("sign_of_return")
    unregister_loss("reinforce")


def test_registered_estimator_and_loss_train(registered, tiny_model_path):
    cfg = RunConfig.from_dict({"loop": {"algo": "sign_of_return", "loss": "reinforce"}, "trainer": {"lr": 1e-2}})
    with pytest.raises(ValueError, match="loop.loss"):
        RunConfig.from_dict({"loop": {"loss": "nope"}})
    trainer = LoRATrainer(tiny_model_path, TrainerConfig(lr=1e-2, minibatches=2), seed=0)
    before = {n: p.detach().clone() for n, p in trainer.lora_parameters().items()}
    stats = update(trainer, cfg, two_games(), 1, {})
    assert stats["scored_tokens"] == stats["trained_tokens"] > 0  # every trained token scored once per epoch
    assert stats["trained_acts"] == 6.0
    assert stats["adv_mean"] == pytest.approx(0.0)  # three +1 and three -1 acts
    after = trainer.lora_parameters()
    assert all(not torch.equal(before[n], after[n]) for n in before)  # two optimizer steps move A and B
