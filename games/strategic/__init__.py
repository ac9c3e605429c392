"""The strategic games (rules by OpenSpiel), registered in `stratagem.games.registry` on import: tic-tac-toe, Kuhn
poker and mini Hanabi are MARS's training games; Connect Four, Leduc hold'em and simple Hanabi are held out."""

from __future__ import annotations

from typing import Any

from stratagem.games.registry import GameSpec, RolloutJob, register_game
from stratagem.games.strategic.board import ConnectFour, TicTacToe
from stratagem.games.strategic.hanabi import MiniHanabi, SimpleHanabi
from stratagem.games.strategic.poker import KuhnPoker, LeducPoker


def build_graph(*args: Any, **kwargs: Any):
    """`stratagem.games.graph.build_graph` (imported on use: LangGraph is not needed to make a game)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    from stratagem.games.graph import build_graph as build

    return build(*args, **kwargs)


async def rollout(job: RolloutJob):
    """`stratagem.games.rollout.rollout_strategic` (imported on use)."""
    # deferred: the registry imports this package to list the games; playing one needs more
    from stratagem.games.rollout import rollout_strategic

    return await rollout_strategic(job)


HELP = {
    "tictactoe": "Tic-tac-toe: two players, perfect information, zero-sum (training game).",
    "kuhn_poker": "Kuhn poker: three cards, one bet, imperfect information, zero-sum (training game).",
    "mini_hanabi": "Hanabi, a small deck: two players cooperate with hidden hands (training game).",
    "connect_four": "Connect Four: two players, perfect information, zero-sum (held out).",
    "leduc_poker": "Leduc hold'em: six cards, two betting rounds, imperfect information, zero-sum (held out).",
    "simple_hanabi": "Hanabi, a larger deck: two players cooperate with hidden hands (held out).",
}

for _cls, _training in ((TicTacToe, True), (KuhnPoker, True), (MiniHanabi, True), (ConnectFour, False),
                        (LeducPoker, False), (SimpleHanabi, False)):
    register_game(GameSpec(name=_cls.name, kind="strategic", factory=_cls, build_graph=build_graph, rollout=rollout,
                           training=_training, help=HELP[_cls.name],
                           app=f"stratagem.games.strategic.apps:{_cls.name}"))
