"""The agent interface: every seat (language model, bot, human) turns an Observation into a Reply."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stratagem.games.core import Observation, Reply


@runtime_checkable
class Agent(Protocol):
    name: str

    async def act(self, observation: Observation) -> Reply: ...
