"""Stratagem: language models learn to reason by playing with and against each other."""

__version__ = "0.1.0"
