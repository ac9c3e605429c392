"""Fakes for loop tests: a tiny random-weight Llama, a scripted rollout with token ids, and a server stand-in."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from stratagem.games.core import Episode, Seat, Turn

VOCAB = 64


def tiny_model(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def fake_episode(game: str, seed: int, model: str) -> Episode:
    """Two seats, 2-3 turns each, growing-chat token ids, a random winner drawn from the seed."""
    rng = random.Random(seed)
    winner = rng.randrange(2)
    seats = [Seat(0, "x", f"llm:{model}"), Seat(1, "o", f"llm:{model}")]
    turns, history = [], {0: [1, 2, 3], 1: [1, 4, 5]}
    for k in range(rng.choice([4, 5])):
        s = k % 2
        prompt = history[s] + [6 + k]
        completion = [rng.randrange(10, VOCAB) for _ in range(3)]
        legal = rng.random() < 0.7
        turns.append(Turn(seat=s, role=seats[s].role, phase="play", messages=[], response="",
                          illegal_reason=None if legal else "bad", prompt_token_ids=prompt,
                          completion_token_ids=completion, logprobs=[-4.0] * 3, reward=0.1 if legal else -0.1,
                          adapter=model))
        history[s] = prompt + completion
    last = {t.seat: i for i, t in enumerate(turns)}
    for s, i in last.items():
        turns[i].reward += 1.0 if s == winner else -1.0
    returns = [sum(t.reward for t in turns if t.seat == s) for s in (0, 1)]
    return Episode(game=game, seed=seed, seats=seats, turns=turns, returns=returns, winners=[winner])


def make_fake_rollout(calls: list, delay: float = 0.0, fail_first: int = 0, server=None):
    """A rollout that records (game, model, n, seed), fires on_episode per episode and can fail its first calls
    after one episode, taking `server` down with it (a crash mid-rollout)."""
    state = {"failures": fail_first}

    async def rollout(game, model, n, seed, on_episode):
        calls.append((game, model, n, seed))
        out = []
        for i in range(n):
            if delay:
                await asyncio.sleep(delay)
            ep = fake_episode(game, seed + i, model)
            on_episode(ep)
            out.append(ep)
            if state["failures"] and i == 0:
                state["failures"] -= 1
                if server is not None:
                    server.up = False
                raise ConnectionError("server went away")
        return out

    return rollout


class FakeServer:
    """Records adapter loads and verifications; `alive` can be switched off to simulate a crash."""

    base_url = "http://127.0.0.1:9/v1"
    owned = True  # a server the loop manages: it may restart it

    def __init__(self, weight_reload: bool = False):
        self.config = type("Config", (), {"weight_reload": weight_reload})()
        self.policy_loads: list[str] = []
        self.loaded: list[tuple[str, str]] = []
        self.verified: list[str] = []
        self.up = True
        self.restarts = 0

    def alive(self):
        return self.up

    def restart(self):
        self.restarts += 1
        self.up = True
        return self

    def stop(self):
        pass

    def load_adapter(self, name, path, replace=False):
        assert Path(path, "adapter_model.safetensors").exists()
        self.loaded.append((name, str(path)))
        return name

    def load_policy_weights(self, path, version):
        assert Path(path, "adapter_model.safetensors").exists()
        self.policy_loads.append(version)
        return {"max_abs_diff": 0.0}

    def verify_adapter(self, name, path=None):
        self.verified.append(name)
        return {"max_abs_diff": 0.0}


class CharTokenizer:
    """Ids for the tiny model (VOCAB ids): one per character, 0-2 kept for the chat markers and end of turn."""

    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [3 + ord(c) % (VOCAB - 3) for c in text]}

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> list[int]:
        return [0] + self(messages[-1]["content"])["input_ids"] + [1]


def two_games(tok=None) -> list[Episode]:
    """Two short tic-tac-toe-like games; the second seat's second prompt extends its first (a growing chat). `tok`:
    a real tokenizer (ids of its model), or None for the tiny model's CharTokenizer."""
    tok = tok or CharTokenizer()

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    def prompt(text):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=False)
        return ids(chat) if isinstance(chat, str) else list(chat)

    eps = []
    for g, w in enumerate([0, 1]):
        p0, c0 = prompt(f"Game {g}. You are X. Move."), ids("<answer><X(1,1)></answer>") + [tok.eos_token_id]
        p1, c1 = prompt(f"Game {g}. You are O. Move."), ids("<answer><O(0,0)></answer>") + [tok.eos_token_id]
        p1b, c1b = p1 + c1 + ids("\nAgain."), ids("<answer><O(2,2)></answer>")
        turns = [Turn(seat=0, role="x", phase="play", messages=[], response="", prompt_token_ids=p0,
                      completion_token_ids=c0, logprobs=[-1.0] * len(c0), reward=1.0 if w == 0 else -1.0),
                 Turn(seat=1, role="o", phase="play", messages=[], response="", prompt_token_ids=p1,
                      completion_token_ids=c1, logprobs=[-1.0] * len(c1), reward=0.0),
                 Turn(seat=1, role="o", phase="play", messages=[], response="", prompt_token_ids=p1b,
                      completion_token_ids=c1b, logprobs=None, reward=1.0 if w == 1 else -1.0)]
        eps.append(Episode(game="ttt", seed=g, seats=[Seat(0, "x", "m"), Seat(1, "o", "m")], turns=turns,
                           returns=[t.reward for t in turns[:1]] + [turns[2].reward], winners=[w]))
    return eps


def bots_in_llm_seats(monkeypatch) -> None:
    """The rollout's LLM seats played by random bots named as the served policies (`llm:NAME`): the seating and
    training logic of a rollout without a server."""
    import stratagem.games.rollout as rollout_mod
    from stratagem.agents.bots import RandomAgent

    real = rollout_mod.make_agent

    def stand_in(spec, **kw):
        if spec.startswith("llm:"):
            bot = RandomAgent(seed=kw.get("seed", 0))
            bot.name = spec
            return bot
        return real(spec, seed=kw.get("seed", 0), game=kw.get("game"))

    monkeypatch.setattr(rollout_mod, "make_agent", stand_in)
