"""Strategic games with scripted and bot agents: conformance, parsing, rewards, graph, rollouts (seconds)."""

from __future__ import annotations

import httpx
import openai
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from stratagem.agents import make_agent
from stratagem.games.base import GameConfig, ReplyFormat, RewardConfig, parse_answer
from stratagem.games.core import Reply
from stratagem.games.graph import build_graph, initial_state, play
from stratagem.games.registry import GAME_NAMES, make_game
from stratagem.games.rollout import RolloutError, collect_episodes
from stratagem.games.strategic.poker import KuhnPoker
from stratagem.games.testing import ConformanceError, check_game

# The scripted replies below are whole free-form answers: they are judged in the plain reply format (no forced
# prefix, closed <answer> required), not the training protocol that ReplyFormat() defaults to.
PLAIN_REPLY = ReplyFormat(response_prefix="", open_answer=False)
PLAIN = GameConfig(reply=PLAIN_REPLY)


class Scripted:
    """Replies with the given texts in order (a stand-in for a language model)."""

    def __init__(self, *texts: str, model: str = "scripted"):
        self.texts = list(texts)
        self.name = f"llm:{model}"
        self.model = model
        self.seen = []

    async def act(self, obs):
        self.seen.append(obs)
        text = self.texts.pop(0)
        return Reply(text=text, prompt_token_ids=[1, 2], completion_token_ids=[3], logprobs=[-0.5], model=self.model)


def test_the_check_catches_a_leak_of_the_opponents_card():
    class Leaky(KuhnPoker):
        def state_text(self, state, seat):
            return super().state_text(state, seat) + f" (deal: {state.history()[:2]})"

    with pytest.raises(ConformanceError, match="hidden information leaks"):
        check_game(Leaky(), episodes=50)


def test_parse_answer():
    legal = ["<X(0,2)>", "<X(1,1)>"]
    plain = PLAIN_REPLY
    assert parse_answer("<answer><X(0,2)></answer>", legal, plain) == ("<X(0,2)>", None)
    assert parse_answer("I pick <answer> x(1,1) </answer>", legal, plain) == ("<X(1,1)>", None)
    assert parse_answer("<X(0,2)>", legal, plain)[1] == "malformed: no <answer>...</answer>"
    assert parse_answer("<answer>X(0,2)</answer><answer>X(1,1)</answer>", legal, plain)[1] == "malformed: 2 answers"
    assert parse_answer("<answer>X(2,2)</answer>", legal, plain)[1].startswith("illegal")
    think = ReplyFormat(think=True)
    assert parse_answer("<think>center</think><answer>X(1,1)</answer>", legal, think) == ("<X(1,1)>", None)
    assert parse_answer("<answer>X(1,1)</answer>", legal, think)[1].startswith("malformed: expected <think>")


async def test_rewards_of_a_won_tictactoe_game_worked_by_hand():
    # X: (0,0) (0,1) (0,2) wins on its third move; O: (1,0) (1,1)
    x = Scripted("<answer><X(0,0)></answer>", "<answer>X(0,1)</answer>", "<answer><X(0,2)></answer>")
    o = Scripted("<answer><O(1,0)></answer>", "<answer><O(1,1)></answer>")
    ep = await play(make_game("tictactoe", PLAIN), [x, o], seed=0)
    assert [t.action for t in ep.turns] == ["<X(0,0)>", "<O(1,0)>", "<X(0,1)>", "<O(1,1)>", "<X(0,2)>"]
    assert [round(t.reward, 9) for t in ep.turns] == [0.05, 0.05, 0.05, -0.95, 1.05]
    assert [round(r, 9) for r in ep.returns] == [1.15, -0.9]
    assert ep.winners == [0] and ep.end_reason == "terminal"
    assert all(t.adapter == "scripted" and t.completion_token_ids == [3] and t.logprobs == [-0.5] for t in ep.turns)


async def test_draw_pays_each_seat_and_constants_are_configurable():
    moves_x = ["X(0,0)", "X(0,1)", "X(1,2)", "X(2,0)", "X(2,2)"]
    moves_o = ["O(0,2)", "O(1,0)", "O(1,1)", "O(2,1)"]
    cfg = GameConfig(rewards=RewardConfig(draw=0.5, format_bonus=0.0), reply=PLAIN_REPLY)
    ep = await play(make_game("tictactoe", cfg), [Scripted(*(f"<answer>{m}</answer>" for m in moves_x)),
                                                Scripted(*(f"<answer>{m}</answer>" for m in moves_o))])
    assert ep.returns == [0.5, 0.5] and ep.winners == []


@pytest.mark.parametrize("reply,reason", [
    ("<answer><X(5,5)></answer>", "illegal"), ("", "malformed"), ("<answer>X(0,0)</answer><answer>X(1,1)</answer>",
                                                                   "malformed")])
async def test_a_bad_reply_ends_the_game_with_the_loss_minus_ten(reply, reason):
    x = Scripted("<answer>X(0,0)</answer>", "")
    o = Scripted(reply)
    ep = await play(make_game("tictactoe", PLAIN), [x, o])
    assert len(ep.turns) == 2 and ep.end_reason == "illegal" and ep.turns[1].illegal_reason.startswith(reason)
    assert [round(r, 9) for r in ep.returns] == [0.05, -11.0]  # X: its 0.05 bonus, no win; O: no bonus, -1 - 10
    assert ep.turns[1].action is None


async def test_an_over_long_reply_is_penalised():
    class Cut(Scripted):
        async def act(self, obs):
            return Reply(text="<answer>X(1", finish_reason="length", completion_token_ids=[1] * 8)

    ep = await play(make_game("kuhn_poker"), [Cut(), make_agent("random")])
    assert ep.turns[0].illegal_reason.startswith("over-long") and ep.returns == [-11.0, 0.0]  # ante 1 + 10; no win for the other seat


async def test_a_prompt_beyond_the_context_is_an_over_long_turn():
    class Overflow(Scripted):
        async def act(self, obs):
            raise openai.BadRequestError(
                "This model's maximum context length is 4096 tokens.", body=None,
                response=httpx.Response(400, request=httpx.Request("POST", "http://127.0.0.1/v1")))

    ep = await play(make_game("tictactoe"), [make_agent("random"), Overflow()])
    assert ep.turns[1].illegal_reason.startswith("over-long") and ep.returns[1] == -11.0


async def test_each_seat_keeps_its_own_history_without_the_opponents_reasoning():
    x = Scripted("secret plan A <answer>X(0,0)</answer>", "<answer>X(2,2)</answer>", "<answer>X(0,1)</answer>")
    o = Scripted("secret plan B <answer>O(1,1)</answer>", "<answer>O(0,2)</answer>", "<answer>O(2,0)</answer>")
    await play(make_game("tictactoe", PLAIN), [x, o])
    second = x.seen[1].messages
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "secret plan A <answer>X(0,0)</answer>"
    assert "plan B" not in str(second) and "O (player 1) chose <O(1,1)>" in second[3]["content"]
    assert "<X(" in second[3]["content"] and "Board" in second[3]["content"]


async def test_kuhn_shows_own_card_only_and_names_actions_pass_and_bet():
    p0, p1 = Scripted("<answer><BET></answer>"), Scripted("<answer><PASS></answer>")  # facing a bet, PASS folds
    ep = await play(make_game("kuhn_poker", PLAIN), [p0, p1], seed=3)
    assert p0.seen[0].legal_actions == ["<PASS>", "<BET>"] and p1.seen[0].legal_actions == ["<PASS>", "<BET>"]
    game = make_game("kuhn_poker")
    game.reset(3)
    cards = game.state.history()[:2]
    text0 = p0.seen[0].messages[-1]["content"]
    assert f"Your card: {'JQK'[cards[0]]}" in text0
    assert [round(r, 9) for r in ep.returns] == [1.05, -0.95]  # a fold loses whatever the cards


async def test_response_prefix_is_part_of_the_recorded_response():
    cfg = GameConfig(reply=ReplyFormat(response_prefix="<answer>"))
    x = Scripted("<X(1,1)></answer>", *["<X(0,0)></answer>"] * 4)
    o = Scripted(*["bad"] * 4)
    ep = await play(make_game("tictactoe", cfg), [x, o])
    assert x.seen[0].response_prefix == "<answer>"
    assert ep.turns[0].response == "<answer><X(1,1)></answer>" and ep.turns[0].action == "<X(1,1)>"


async def test_same_seeds_same_episodes_whatever_the_concurrency():
    agents = [make_agent("mcts:20", seed=1), make_agent("random", seed=2)]
    a = await collect_episodes("tictactoe", agents, 6, concurrency=1, seed=10)
    b = await collect_episodes("tictactoe", agents, 6, concurrency=6, seed=10)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.seed for e in a] == list(range(10, 16))


async def test_a_server_error_replays_the_whole_episode():
    class Flaky(Scripted):
        calls = 0

        async def act(self, obs):
            Flaky.calls += 1
            if Flaky.calls == 2:  # mid-episode, on this seat's second turn
                raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/v1"))
            return Reply(text=f"<answer>{obs.legal_actions[0]}</answer>", model="base")

    got = []
    eps = await collect_episodes("tictactoe", [Flaky(), make_agent("random")], 1, on_episode=got.append,
                                 config=PLAIN)
    assert len(eps) == 1 and got == eps and eps[0].end_reason == "terminal"
    assert Flaky.calls > 2 and eps[0].turns[0].seat == 0  # replayed from the first move

    class Dead(Scripted):
        async def act(self, obs):
            raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/v1"))

    saved = []
    with pytest.raises(RolloutError):
        await collect_episodes("tictactoe", [Dead(), Dead()], 1, on_episode=saved.append, retries=1)
    assert saved == []


async def test_mcts_beats_random_at_tictactoe():
    eps = await collect_episodes("tictactoe", [make_agent("mcts:100"), make_agent("random", seed=5)], 10)
    assert sum(e.winners == [0] for e in eps) >= 8


async def test_cfr_plays_kuhn():
    eps = await collect_episodes("kuhn_poker", [make_agent("cfr", game="kuhn_poker"), make_agent("random")], 20)
    assert all(e.end_reason == "terminal" for e in eps)
    assert all(t.legal for e in eps for t in e.turns)


async def test_a_human_seat_pauses_the_graph_and_resumes_with_the_move():
    game = make_game("tictactoe")
    graph = build_graph(game, [make_agent("human"), make_agent("random")], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t1"}}
    out = await graph.ainvoke(initial_state(), cfg)
    ask = out["__interrupt__"][0].value
    assert ask["seat"] == 0 and "<X(1,1)>" in ask["legal_actions"]
    out = await graph.ainvoke(Command(resume="<X(1,1)>"), cfg)
    assert game.turns[0].action == "<X(1,1)>" and len(game.turns) == 2  # the bot answered, the human is asked again
    assert "__interrupt__" in out


def test_make_agent_rejects_bad_specs():
    with pytest.raises(ValueError, match="unknown agent spec"):
        make_agent("alphazero")
    with pytest.raises(ValueError, match="mcts:N"):
        make_agent("mcts:many")
    with pytest.raises(ValueError, match="base_url"):
        make_agent("llm:base")
    with pytest.raises(ValueError, match="unknown game"):
        make_game("chess")


def test_legal_prefix_forces_the_start_every_legal_action_shares():
    from stratagem.games.base import ReplyFormat, response_prefix

    fmt = ReplyFormat(response_prefix="<answer>{legal_prefix}")
    assert response_prefix(fmt, ["<X(0,0)>", "<X(0,1)>", "<X(2,2)>"]) == "<answer><X("
    assert response_prefix(fmt, ["<PASS>", "<BET>"]) == "<answer><"
    assert response_prefix(fmt, ["<X(2,2)>"]) == "<answer><X(2,2)>"
    assert response_prefix(ReplyFormat(response_prefix="<answer>"), ["<PASS>"]) == "<answer>"
    game = make_game("tictactoe", config=GameConfig(reply=fmt))
    game.reset(0)
    obs = game.observe(0)
    assert obs.response_prefix == "<answer><X("
    turn = game.step(0, Reply(text="1,1)></answer>"))
    assert (turn.action, turn.response) == ("<X(1,1)>", "<answer><X(1,1)></answer>")


def test_an_unclosed_answer_counts_only_when_open_answers_are_on():
    legal = ["<X(0,0)>", "<X(1,1)>"]
    assert parse_answer("<answer><X(1,1)>", legal, PLAIN_REPLY) == (None, "malformed: no <answer>...</answer>")
    assert ReplyFormat().open_answer and ReplyFormat().response_prefix == "<answer>{legal_prefix}"  # training's
    fmt = ReplyFormat(open_answer=True)
    assert parse_answer("<answer><X(1,1)>", legal, fmt) == ("<X(1,1)>", None)
    assert parse_answer("<answer><X(1,1)></answer>", legal, fmt) == ("<X(1,1)>", None)
    assert parse_answer("<answer><X(0,0)> <answer><X(1,1)>", legal, fmt)[0] is None  # two answers stay malformed
    assert parse_answer("<answer><X(2,2)>", legal, fmt)[1].startswith("illegal")


@pytest.mark.parametrize("think", [False, True])
def test_instructions_show_a_real_action_of_the_game(think):
    """The example in the reply instruction is a real action label (the think-mode string once printed a literal
    `{self.example_action}`)."""
    for name in GAME_NAMES:
        g = make_game(name, GameConfig(reply=ReplyFormat(think=think)))
        text = g.instructions()
        assert "{" not in text and f"<answer>{g.example_action}</answer>" in text
        assert ("<think>...</think><answer>" in text) == think
