"""Who acts: language-model agents over an OpenAI-compatible endpoint, bots, humans. `make_agent(spec)` builds one
from its command-line spec."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stratagem.agents.base import Agent

AGENT_SPECS = "llm:MODEL, random, mcts:N, cfr, nash, human"


def check_agent_spec(spec: str, *, game: str | None = None) -> tuple[str, str]:
    """(kind, argument) of an agent spec, checked as `make_agent` would check it (for `game` when given) without
    building the agent: no endpoint is contacted and no policy computed. A ValueError names the spec."""
    if not isinstance(spec, str):
        raise ValueError(f"agent spec {spec!r}: expected a string, one of {AGENT_SPECS}")
    kind, _, arg = spec.strip().partition(":")
    if kind == "llm":
        if not arg:
            raise ValueError(f"agent spec {spec!r}: expected llm:MODEL, e.g. llm:base")
    elif kind in ("random", "human"):
        if arg:
            raise ValueError(f"agent spec {spec!r}: {kind} takes no argument")
    elif kind == "mcts":
        try:
            n = int(arg) if arg else 1
        except ValueError:
            raise ValueError(f"agent spec {spec!r}: expected mcts:N with N an integer") from None
        if n < 1:
            raise ValueError(f"agent spec {spec!r}: N must be >= 1")
        if game is not None:
            from stratagem.games.registry import make_game

            if not make_game(game).info.perfect_information:
                raise ValueError(f"agent spec {spec!r}: MCTS would search {game}'s hidden information; "
                                 "use cfr (poker) or random")
    elif kind == "cfr":
        from stratagem.agents.bots import CFR_GAMES

        if arg and not (arg.isdigit() and int(arg) >= 1):
            raise ValueError(f"agent spec {spec!r}: expected cfr or cfr:N with N a positive integer")
        if game is not None and game not in CFR_GAMES:
            raise ValueError(f"agent spec {spec!r}: cfr plays {' and '.join(sorted(CFR_GAMES))} only, not {game}")
    elif kind == "nash":
        from stratagem.agents.bots import CFR_GAMES

        if arg:
            raise ValueError(f"agent spec {spec!r}: nash takes no argument")
        if game is not None and game not in CFR_GAMES:
            raise ValueError(f"agent spec {spec!r}: nash plays {' and '.join(sorted(CFR_GAMES))} only, not {game}")
    else:
        raise ValueError(f"unknown agent spec {spec!r}; expected one of {AGENT_SPECS}")
    return kind, arg


def make_agent(spec: str, *, base_url: str | None = None, seed: int = 0, game: str | None = None,
               **llm_overrides: Any) -> Agent:
    """An agent from `spec`: `llm:MODEL` (a served model or adapter name, e.g. llm:base, llm:iter-2; needs
    `base_url`; `llm_overrides` fill LLMAgentConfig), `random`, `mcts:N` (N simulations), `cfr` or `cfr:N` (N CFR
    iterations; needs `game`), `nash` (the exact equilibrium of a poker game; needs `game`), `human`. The spec is checked by `check_agent_spec`."""
    kind, arg = check_agent_spec(spec, game=game)
    if kind == "llm":
        from stratagem.agents.llm import LLMAgent, LLMAgentConfig

        if base_url is None:
            raise ValueError(f"agent spec {spec!r} needs a base_url (an OpenAI-compatible endpoint)")
        return LLMAgent(LLMAgentConfig(base_url=base_url, model=arg, **llm_overrides))
    if llm_overrides:
        raise ValueError(f"agent spec {spec!r}: LLM options {sorted(llm_overrides)} apply to llm:MODEL only")
    if kind == "random":
        from stratagem.agents.bots import RandomAgent

        return RandomAgent(seed=seed)
    if kind == "mcts":
        from stratagem.agents.bots import MCTSAgent, MCTSConfig

        return MCTSAgent(MCTSConfig(simulations=int(arg) if arg else MCTSConfig().simulations), seed=seed)
    if kind == "cfr":
        from stratagem.agents.bots import CFRAgent, CFRConfig

        if game is None:
            raise ValueError("agent spec 'cfr' needs the game (kuhn_poker or leduc_poker)")
        return CFRAgent(game, CFRConfig(iterations=int(arg)) if arg else None, seed=seed)
    if kind == "nash":
        from stratagem.agents.equilibrium import NashAgent

        if game is None:
            raise ValueError("agent spec 'nash' needs the game (kuhn_poker or leduc_poker)")
        return NashAgent(game, seed=seed)
    from stratagem.agents.human import HumanAgent

    return HumanAgent()


async def close_agents(agents: Iterable[Any]) -> None:
    """Close the HTTP clients of the agents that hold one (each once; self-play seats share an agent). Call it
    inside the event loop that used them: left to the garbage collector, they close after asyncio.run has closed
    the loop and print tracebacks."""
    for agent in {id(a): a for a in agents}.values():
        if hasattr(agent, "aclose"):
            await agent.aclose()


__all__ = ["AGENT_SPECS", "Agent", "check_agent_spec", "close_agents", "make_agent"]
