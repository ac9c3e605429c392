"""What is played: the data model, the game interface, the graph builder, strategic and mystery games."""

from stratagem.games.core import Episode, Observation, Reply, Seat, Turn, read_jsonl, write_jsonl

__all__ = ["Episode", "Observation", "Reply", "Seat", "Turn", "read_jsonl", "write_jsonl"]
