"""Who acts: language-model agents over an OpenAI-compatible endpoint, bots, humans."""

from stratagem.agents.base import Agent

__all__ = ["Agent"]
