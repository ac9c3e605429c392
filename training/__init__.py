"""How it learns: rollouts, the episode store, advantage estimators, losses, the LoRA trainer, the loop."""
