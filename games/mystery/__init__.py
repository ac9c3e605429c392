"""The murder-mystery game (MIRAGE's rules), registered in `stratagem.games.registry` on import as `mystery`."""

from __future__ import annotations

from typing import Any

import stratagem.games.strategic  # noqa: F401  the strategic games register first: the registry keeps the built-in order
from stratagem.games.registry import GameSpec, RolloutJob, register_game


def make_mystery(config: Any = None, script: str = "lighthouse", seed: int = 0,
                 summaries: dict[str, list[str]] | None = None, count_tokens: Any = None, **params: Any):
    """A fresh `Mystery` (the `Game` of mystery.py) of `script` (a shipped name or a folder) dealt with `seed`;
    `config` a MysteryConfig, `summaries` the characters' prepared summaries, `count_tokens` the history's token
    counter (default: the tokenizer of config.tokenizer)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    from stratagem.games.mystery.mystery import Mystery

    if params:
        raise ValueError(f"unknown mystery parameters {sorted(params)}; expected script, seed, summaries, "
                         "count_tokens")
    return Mystery.deal(script, seed, config, summaries, count_tokens)


def build_graph(*args: Any, **kwargs: Any):
    """`stratagem.games.mystery.graph.build_graph` (imported on use)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    from stratagem.games.mystery.graph import build_graph as build

    return build(*args, **kwargs)


async def rollout(job: RolloutJob):
    """Mystery episodes for training: every seat the learner's policy, the judge the base model; the game's options
    from the run's `mystery` section (`job.section`), the script from `job.params["script"]`. The players sample at
    the policy's sampling temperature unless the section sets its own (the trainer scores their turns at it)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    import dataclasses

    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.rollout import collect_mystery_episodes

    cfg = job.section or MysteryConfig()
    if cfg.player_temperature is None:
        cfg = dataclasses.replace(cfg, player_temperature=job.sampling.temperature)
    return await collect_mystery_episodes(job.params.get("script", "lighthouse"), job.n, base_url=job.base_url,
                                          player_model=job.policy, judge_model="base", config=cfg,
                                          concurrency=job.concurrency, seed=job.seed, on_episode=job.on_episode,
                                          api_key=job.api_key, faction_models=job.role_policies or None)


def check(workdir: Any = None):
    """The mystery's conformance check (conformance.check_mystery)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    from stratagem.games.mystery.conformance import check_mystery

    return check_mystery(workdir)


register_game(GameSpec(name="mystery", kind="social", factory=make_mystery, build_graph=build_graph, rollout=rollout,
                       training=False, help="Murder mystery (MIRAGE's rules): talk, investigate, vote; culprits "
                       "against civilians.", app="stratagem.games.mystery.graph:app", check=check,
                       config_section="mystery"))
