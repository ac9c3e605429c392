"""The LangGraph apps that `langgraph dev` serves (langgraph.json): all game state in the graph state, seats from the
run's context."""

from __future__ import annotations

import asyncio

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from stratagem.games.core import Episode
from stratagem.games.graph import initial_state, replay
from stratagem.games.registry import game_names, make_game
from stratagem.games.strategic import apps


def test_every_registered_strategic_game_has_an_app():
    for name in game_names("strategic"):
        graph = getattr(apps, name)
        assert graph.get_name() == name and graph.builder.context_schema is apps.Seats


async def test_a_human_seat_pauses_and_a_new_graph_with_the_same_checkpointer_resumes_the_game():
    saver = InMemorySaver()
    run = {"configurable": {"thread_id": "g1"}}
    first = apps.build_app("tictactoe", checkpointer=saver)
    out = await first.ainvoke(initial_state(seed=4), run, context=apps.Seats(players=["human", "mcts:20"]))
    ask = out["__interrupt__"][0].value
    assert ask["seat"] == 0 and len(ask["legal_actions"]) == 9 and out["players"] == ["human", "mcts:20"]
    del first  # nothing of the game lives outside the checkpoint now
    moves = []
    while "__interrupt__" in out:
        graph = apps.build_app("tictactoe", checkpointer=saver)  # a fresh graph for every move
        legal = out["__interrupt__"][0].value["legal_actions"]
        moves.append(legal[0])
        out = await graph.ainvoke(Command(resume=legal[0]), run)  # no context: the recorded seats go on
    ep = Episode.from_dict(out["episode"])
    assert [t.action for t in ep.turns if t.seat == 0] == moves and ep.end_reason == "terminal"
    assert [s.agent for s in ep.seats] == ["human", "mcts:20"] and out["returns"] == ep.returns
    assert ep.returns[1] > 0  # MCTS beats a human who always takes the first free square
    # the state alone rebuilds the game: replaying its acts gives the same episode
    again = replay(make_game("tictactoe"), out["seed"], out["acts"])
    assert [t.response for t in again.turns] == [t.response for t in ep.turns]
    assert (await graph.aget_state(run)).values["returns"] == ep.returns


@pytest.mark.parametrize("name,players", [("tictactoe", ["mcts:10", "random"]), ("kuhn_poker", ["cfr", "random"]),
                                          ("mini_hanabi", ["random", "random"]),
                                          ("connect_four", ["random", "mcts:5"]),
                                          ("leduc_poker", ["random", "random"]),
                                          ("simple_hanabi", ["random", "random"])])
async def test_every_app_plays_a_game_with_the_seats_of_the_context(name, players):
    out = await getattr(apps, name).ainvoke(initial_state(seed=1), context={"players": players})
    ep = Episode.from_dict(out["episode"])
    assert out["seat"] is None and [s.agent for s in ep.seats] == players and ep.game == name
    assert len(ep.turns) == len(out["acts"]) >= 1 and out["returns"] == ep.returns


async def test_threads_run_at_once_without_sharing_a_game():
    graph = apps.build_app("connect_four", checkpointer=InMemorySaver())
    ctx = apps.Seats(players=["random", "random"])

    async def game(thread: str, seed: int):
        out = await graph.ainvoke(initial_state(seed=seed), {"configurable": {"thread_id": thread}}, context=ctx)
        return [a["action"] for a in out["acts"]]

    together = await asyncio.gather(*(game(f"t{i}", i % 3) for i in range(6)))
    alone = [await game(f"s{i}", i % 3) for i in range(6)]
    assert together == alone and together[0] == together[3] and together[0] != together[1]


async def test_bad_seats_are_errors_naming_the_context():
    with pytest.raises(ValueError, match=r"context players: tictactoe needs 2 seats"):
        await apps.tictactoe.ainvoke(initial_state(), context={"players": ["random"]})
    with pytest.raises(ValueError, match=r"context players \['cfr', 'random'\]: .*cfr"):
        await apps.tictactoe.ainvoke(initial_state(), context={"players": ["cfr", "random"]})
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'seats'"):  # LangGraph builds Seats(**context)
        await apps.tictactoe.ainvoke(initial_state(), context={"seats": ["random", "random"]})
