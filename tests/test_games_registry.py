"""The game registry: every registered game passes its conformance check, langgraph.json is generated from it, and
a game defined outside the package is one `register_game` call away from rollouts, graphs and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from training_fakes import bots_in_llm_seats
from typer.testing import CliRunner

from stratagem.agents import make_agent
from stratagem.games import registry
from stratagem.games.base import Game, GameConfig, GameInfo, parse_answer, response_prefix
from stratagem.games.core import Episode, Observation, Reply, Seat, Turn
from stratagem.games.graph import build_graph, episode_of, initial_state
from stratagem.games.langgraph_config import langgraph_config, render
from stratagem.games.registry import (
    GameSpec,
    RolloutJob,
    game_names,
    game_specs,
    get_game_spec,
    make_game,
    register_game,
    unregister_game,
)
from stratagem.games.rollout import collect_episodes
from stratagem.games.testing import check_registered

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [s.name for s in game_specs()])
def test_every_registered_game_passes_its_conformance_check(name, tmp_path):
    report = check_registered(name, workdir=tmp_path)
    if get_game_spec(name).check is None:
        assert report.episodes == 200 and report.max_turns_seen <= make_game(name).info.max_turns


def test_the_registry_lists_the_six_strategic_games_and_the_mars_training_games():
    assert game_names("strategic") == registry.GAME_NAMES == ("tictactoe", "kuhn_poker", "mini_hanabi", "connect_four",
                                                     "leduc_poker", "simple_hanabi")
    assert registry.TRAINING_GAMES == ("tictactoe", "kuhn_poker", "mini_hanabi")
    assert game_names("strategic", training=False) == ("connect_four", "leduc_poker", "simple_hanabi")
    assert all(get_game_spec(n).help for n in game_names())


def test_bad_names_and_specs_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown game 'tictactoo'; expected one of tictactoe, kuhn_poker"):
        get_game_spec("tictactoo")
    with pytest.raises(ValueError, match="kind must be one of strategic, social, got 'board'"):
        GameSpec(name="x", kind="board", factory=Pennies, build_graph=build_graph, rollout=_rollout)
    with pytest.raises(ValueError, match="already registered"):
        register_game(GameSpec(name="tictactoe", kind="strategic", factory=Pennies, build_graph=build_graph,
                               rollout=_rollout))
    with pytest.raises(ValueError, match="app must be 'module:attribute'"):
        GameSpec(name="x", kind="strategic", factory=Pennies, build_graph=build_graph, rollout=_rollout, app="a.b")
    with pytest.raises(ValueError, match="kind must be one of"):
        game_names("boardgame")


def test_langgraph_json_is_generated_from_the_registry():
    committed = (ROOT / "langgraph.json").read_text(encoding="utf-8")
    assert committed == render(), "run: python -m stratagem.games.langgraph_config --write"
    graphs = json.loads(committed)["graphs"]
    served = [s.name for s in game_specs() if s.app is not None]
    assert list(graphs) == served and set(game_names("strategic")) <= set(served)
    assert graphs["tictactoe"] == "./games/strategic/apps.py:tictactoe"
    for name, path in graphs.items():  # every entry points at an existing file
        assert (ROOT / path.split(":")[0]).is_file(), (name, path)


# ---- a game defined outside the package ---------------------------------------------------------------------

@dataclass
class PenniesRewards:
    match: float = 1.0


class Pennies(Game):
    """Matching pennies in turns: seat 0 ("matcher") picks heads or tails, seat 1 ("mismatcher") picks without
    seeing it; the matcher wins +1 when they match, else the mismatcher does."""

    def __init__(self, config: GameConfig | None = None, **params):
        self.config = config or GameConfig()
        self.params = dict(params)
        self.info = GameInfo(name="pennies", num_players=2, roles=("matcher", "mismatcher"), max_turns=2,
                             zero_sum=True, cooperative=False, perfect_information=False)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.seed, self.turns, self.picks, self.forfeit = seed, [], [], None

    def current_seat(self) -> int | None:
        return None if self.is_over() else len(self.picks)

    def is_over(self) -> bool:
        return self.forfeit is not None or len(self.picks) == 2

    def observe(self, seat: int) -> Observation:
        legal = ["<HEADS>", "<TAILS>"]
        text = f"You are the {self.info.roles[seat]}. Legal actions: {', '.join(legal)}"
        return Observation(game="pennies", seat=seat, role=self.info.roles[seat], phase="play",
                           messages=[{"role": "user", "content": text}], legal_actions=legal,
                           response_prefix=response_prefix(self.config.reply, legal))

    def step(self, seat: int, reply: Reply) -> Turn:
        obs = self.observe(seat)
        if reply.action is not None:
            action, why = (reply.action, None) if reply.action in obs.legal_actions else (None, "illegal")
        else:
            action, why = parse_answer(obs.response_prefix + reply.text, obs.legal_actions, self.config.reply)
        turn = Turn.from_reply(reply, seat=seat, role=obs.role, phase="play", messages=obs.messages,
                               response=obs.response_prefix + reply.text, action=action, illegal_reason=why,
                               reward=self.config.rewards.format_bonus if why is None else 0.0)
        self.turns.append(turn)
        if why is not None:
            self.forfeit = seat
            turn.reward += -self.normal_loss(seat) - self.config.rewards.illegal_penalty
        else:
            self.picks.append(action)
            if len(self.picks) == 2:
                for t, r in zip(self.turns, self.raw_returns()):
                    t.reward += r
        return turn

    def normal_loss(self, seat: int) -> float:
        return 1.0

    def raw_returns(self) -> list[float]:
        if len(self.picks) < 2:
            return [0.0, 0.0]
        won = 1.0 if self.picks[0] == self.picks[1] else -1.0
        return [won, -won]

    def episode(self, seats: list[Seat]) -> Episode:
        returns = [sum(t.reward for t in self.turns if t.seat == s) for s in range(2)]
        winners = [s for s, r in enumerate(self.raw_returns()) if r > 0] if self.forfeit is None else []
        return Episode(game="pennies", seed=self.seed, seats=seats, turns=list(self.turns), returns=returns,
                       winners=winners, end_reason="terminal" if self.forfeit is None else "illegal")


async def _rollout(job: RolloutJob) -> list[Episode]:
    """Pennies' training rollout: the policy against a random bot (a real one would use LLM agents at
    job.base_url)."""
    agents = [make_agent("random", seed=job.seed), make_agent("random", seed=job.seed + 1)]
    return await collect_episodes(job.game, agents, job.n, job.concurrency, seed=job.seed, on_episode=job.on_episode)


@pytest.fixture
def pennies():
    spec = register_game(GameSpec(name="pennies", kind="strategic", factory=Pennies, build_graph=build_graph,
                                  rollout=_rollout, help="Matching pennies, in turns."))
    yield spec
    unregister_game("pennies")


async def test_a_game_registered_outside_the_package_is_checked_rolled_out_and_played_as_a_graph(pennies, tmp_path):
    # the lists are read from the registry when asked for, so they include a game registered late
    assert "pennies" in game_names() and "pennies" in registry.GAME_NAMES and "pennies" not in registry.TRAINING_GAMES
    assert check_registered("pennies", workdir=tmp_path).episodes == 200
    # the training loop's way in: the registered rollout, through the shared collector
    seen = []
    eps = await get_game_spec("pennies").rollout(RolloutJob(game="pennies", policy="base", n=10, seed=5,
                                                            base_url="", concurrency=3, on_episode=seen.append))
    assert [e.seed for e in eps] == list(range(5, 15)) and sorted(e.seed for e in seen) == list(range(5, 15))
    assert all(len(e.turns) == 2 and e.end_reason == "terminal" and sum(e.returns) == pytest.approx(0.1)
               for e in eps)
    # its graph, with a human matcher paused and resumed
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.types import Command

    game = make_game("pennies")
    agents = [make_agent("human"), make_agent("random", seed=0)]
    graph = pennies.build_graph(game, agents, checkpointer=InMemorySaver())
    run = {"configurable": {"thread_id": "p"}}
    out = await graph.ainvoke(initial_state(), run)
    assert out["__interrupt__"][0].value["legal_actions"] == ["<HEADS>", "<TAILS>"]
    out = await graph.ainvoke(Command(resume="heads"), run)
    ep = episode_of(game, agents)
    assert ep.turns[0].action == "<HEADS>" and out["acts"][0]["action"] == "<HEADS>"
    assert ep.returns == pytest.approx([1.05, -0.95] if ep.turns[1].action == "<HEADS>" else [-0.95, 1.05])


def test_the_command_line_plays_a_registered_game_by_name(pennies, tmp_path):
    from stratagem.cli import app

    res = CliRunner().invoke(app, ["play", "pennies", "--players", "random,random", "--episodes", "4", "--json",
                                   "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["game"] == "pennies" and summary["episodes"] == 4


def test_the_conformance_check_fails_a_registered_game_that_breaks_zero_sum(pennies):
    class Unfair(Pennies):
        def raw_returns(self):
            return [1.0, 0.0] if len(self.picks) == 2 else [0.0, 0.0]

    register_game(GameSpec(name="pennies", kind="strategic", factory=Unfair, build_graph=build_graph,
                           rollout=_rollout), replace=True)
    with pytest.raises(AssertionError, match="do not sum to 0"):
        check_registered("pennies")
    assert langgraph_config()["graphs"].get("pennies") is None  # no app: not served


async def test_the_training_loop_validates_and_rolls_out_a_registered_game_through_its_spec(pennies):
    from stratagem.training.loop import RunConfig, default_rollout, rollout_job

    cfg = RunConfig.from_dict({"loop": {"games": ["pennies", "tictactoe"], "episodes_per_iteration": 4,
                                        "opponents": ["random"]},
                               "sampling": {"max_tokens": 7}, "rewards": {"format_bonus": 0.25}})
    seen = []
    eps = await default_rollout(cfg, "http://127.0.0.1:9/v1")("pennies", "iter-1", 3, 40, seen.append)
    assert [e.seed for e in eps] == [40, 41, 42] and len(seen) == 3 and {e.game for e in eps} == {"pennies"}
    job = rollout_job(cfg, "tictactoe", "iter-1", 3, 40, "http://127.0.0.1:9/v1")  # what tictactoe's rollout reads
    assert job.sampling.agent_kwargs()["max_tokens"] == 7 and job.opponents == ["random"] and job.section is None
    assert job.game_config.rewards.format_bonus == 0.25 and job.game_config.reply is cfg.reply
    unregister_game("pennies")
    try:
        with pytest.raises(ValueError, match=r"loop.games\[0\]: unknown game 'pennies'"):
            RunConfig.from_dict({"loop": {"games": ["pennies"]}})
    finally:
        register_game(pennies)


def test_a_servers_api_key_reaches_every_llm_seat_of_rollouts_and_evals():
    from stratagem.integrations.games_eval import GamesEvalConfig, _agent, model_agent
    from stratagem.training.loop import RunConfig, rollout_job

    def llm_kwargs(cfg):  # what rollout_strategic gives the policy's seats
        job = rollout_job(cfg, "tictactoe", "base", 1, 0, "http://127.0.0.1:9/v1")
        return job.sampling.agent_kwargs(job.api_key)

    assert llm_kwargs(RunConfig.from_dict({"server": {"api_key": "sesame"}}))["api_key"] == "sesame"
    assert "api_key" not in llm_kwargs(RunConfig())  # the agent's own default ("EMPTY") stays
    ec = GamesEvalConfig(api_key="sesame")
    assert model_agent("base", ec).config.api_key == "sesame"
    assert _agent("llm:iter-1", ec, "tictactoe", 0).config.api_key == "sesame"
    assert model_agent("base", GamesEvalConfig()).config.api_key == "EMPTY"


async def test_alternate_policy_seat_plays_half_the_games_each_way_and_trains_that_seat(monkeypatch):
    """loop.policy_seat alternate (MARSHAL's fixed-opponent runs seat the model first in half the games, second in
    the others): game i has the policy first when i is even, and the learner trains exactly the policy's seat."""
    from stratagem.training.loop import RunConfig, default_rollout, learner_for

    bots_in_llm_seats(monkeypatch)  # a bot in the policy's seat, named as the policy: no server needed
    cfg = RunConfig.from_dict({"loop": {"games": ["tictactoe"], "episodes_per_iteration": 5,
                                        "opponents": ["mcts:2"], "policy_seat": "alternate"}})
    saved = []
    eps = await default_rollout(cfg, "http://127.0.0.1:9/v1")("tictactoe", "iter-1", 5, 100, saved.append)
    assert [e.seed for e in eps] == [100, 101, 102, 103, 104]
    assert [[s.agent for s in e.seats] for e in eps[:2]] == [["llm:iter-1", "mcts:2"], ["mcts:2", "llm:iter-1"]]
    assert [e.metrics["policy_seat"] for e in eps] == [0, 1, 0, 1, 0]
    assert sorted(e.seed for e in saved) == [100, 101, 102, 103, 104]  # the seat is recorded before saving
    assert all("policy_seat" in e.metrics for e in saved)
    learner = learner_for(cfg.loop)
    assert [[learner(e, s) for s in (0, 1)] for e in eps[:2]] == [[True, False], [False, True]]
    cfg.loop.policy_seat = "first"
    eps = await default_rollout(cfg, "http://127.0.0.1:9/v1")("tictactoe", "iter-1", 2, 100, None)
    assert [e.seats[0].agent for e in eps] == ["llm:iter-1"] * 2 and [e.metrics["policy_seat"] for e in eps] == [0, 0]
    with pytest.raises(ValueError, match="loop.policy_seat"):
        RunConfig.from_dict({"loop": {"policy_seat": "alternate"}})  # no opponents to alternate with


LIARS_DICE_RULES = ("Liar's dice: each player rolls one six-sided die and sees only their own. Players bid in turn "
                    "on how many dice of a face are on the table (<Q-F>: at least Q dice show face F; 6 counts as "
                    "any face); each bid must be higher than the last, or a player calls <Liar> and the bid is "
                    "checked: the bidder loses if it was false, the caller if it was true.")


async def test_any_openspiel_game_by_name_plays_as_a_registered_game(tmp_path):
    """register_spiel_game: Liar's dice from OpenSpiel with the user's rules passes the conformance check (hidden
    dice: what a seat sees depends only on its own information) and plays to the end with bots and an LLM-format
    reply; a simultaneous-move game is refused."""
    from stratagem.games.strategic.generic import register_spiel_game

    spec = register_spiel_game("liars_dice", rules=LIARS_DICE_RULES)
    try:
        assert "liars_dice" in game_names() and get_game_spec("liars_dice") is spec
        assert check_registered("liars_dice", workdir=tmp_path).episodes > 0
        game = make_game("liars_dice")
        game.reset(3)
        obs = game.observe(game.current_seat())
        text = "\n".join(m["content"] for m in obs.messages)
        assert LIARS_DICE_RULES in text and "What you know:" in text and obs.legal_actions[0].startswith("<1-")
        reply = f"<answer>{obs.legal_actions[0]}</answer>"[len(obs.response_prefix or ""):]  # the prefix is given
        turn = game.step(game.current_seat(), Reply(text=reply))
        assert turn.illegal_reason is None and turn.action == obs.legal_actions[0]
        agents = [make_agent("random", seed=1), make_agent("random", seed=2)]
        eps = await collect_episodes("liars_dice", agents, 6, seed=10)
        assert len(eps) == 6 and all(e.end_reason == "terminal" and len(e.winners) == 1 for e in eps)
        with pytest.raises(ValueError, match="simultaneous"):
            register_spiel_game("matrix_rps", rules="Rock, paper, scissors.")
        with pytest.raises(ValueError, match="rules"):
            register_spiel_game("liars_dice", rules=" ", name="liars_dice_2")
    finally:
        unregister_game("liars_dice")
