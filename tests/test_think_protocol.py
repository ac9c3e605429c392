"""The think protocol (MARS's own reply format, as MARSHAL runs it): the forced '<think>' start, MARSHAL's exact
judge, the turn and context budgets, the turns layout of the prompts, Stratagem's ChatML template (prefix-consistent
turns with the real tokenizer), structured outputs, and the server settings it needs."""

from __future__ import annotations

import re

import httpx
import pytest

from stratagem.agents import make_agent
from stratagem.agents.llm import LLMAgent, served_template_is_chatml
from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import (
    THINK_START,
    GameConfig,
    ReplyFormat,
    chat_template,
    parse_answer,
    parse_exact,
    think_answer_regex,
)
from stratagem.games.core import Reply
from stratagem.games.registry import GAME_NAMES, make_game

# what the marshal preset sets in the reply section
MARSHAL = ReplyFormat(think=True, match="exact", layout="turns", context_tokens=32768, context_margin=1000)
LEGAL = ["<X(0,2)>", "<X(1,1)>"]


def judge(reply: str, legal=LEGAL):
    """MARSHAL's judge of a reply as the model wrote it (the game puts the forced start before it)."""
    return parse_answer(THINK_START + reply, legal, MARSHAL)


@pytest.mark.parametrize("reply, action", [
    ("centre is best</think><answer><X(1,1)></answer>", "<X(1,1)>"),
    ("multi\nline\n</think>\n\n<answer><X(1,1)></answer>", "<X(1,1)>"),  # whitespace between the blocks
    ("ok</think><answer><X(1,1)></answer>\n", "<X(1,1)>"),  # one trailing newline (Python's `$`)
    ("ok</think><answer> <X(1,1)>\n</answer>", "<X(1,1)>"),  # the answer is stripped
    ("ok</think><answer><X(1,1)> || <X(0,2)></answer>", "<X(1,1)>"),  # "A || B": only A is played
    ("ok</think><answer><X(0,2)>||<X(5,5)></answer>", "<X(0,2)>"),
])
def test_marshal_accepts(reply, action):
    assert judge(reply) == (action, None)


@pytest.mark.parametrize("reply, why", [
    ("ok</think><answer><x(1,1)></answer>", "illegal"),  # case-sensitive
    ("ok</think><answer>X(1,1)</answer>", "illegal"),  # no normalisation: the brackets belong to the action
    ("ok</think><answer><X( 1,1)></answer>", "illegal"),
    ("ok</think><answer><X(2,2)></answer>", "illegal"),  # well-formed, not legal
    ("ok</think><answer><X(1,1)></answer><answer><X(0,2)></answer>", "illegal"),  # two answers run together
    ("ok</think><answer><X(1,1)></answer> and done", "malformed"),  # text after </answer>
    ("ok</think><answer><X(1,1)></answer>\n\n", "malformed"),  # more than one trailing newline
    ("ok <answer><X(1,1)></answer>", "malformed"),  # no </think>
    ("ok</think>I play <answer><X(1,1)></answer>", "malformed"),  # text between the blocks
    ("ok</think><X(1,1)>", "malformed"),  # no answer tags
    ("ok</think><answer><X(1,1)>", "malformed"),  # unclosed answer
    ("ok</think><answer></answer>", "malformed"),  # empty answer
    ("ok</think><answer> || </answer>", "malformed"),
    ("", "malformed"),
])
def test_marshal_rejects(reply, why):
    action, reason = judge(reply)
    assert action is None and reason.startswith(why), reason


def test_exact_without_think_is_marshals_answer_only_judge_and_lenient_stays_lenient():
    assert parse_exact("<answer><X(1,1)></answer>", LEGAL, think=False) == ("<X(1,1)>", None)
    assert parse_exact("<answer><X(1,1)></answer>!", LEGAL, think=False)[1].startswith("malformed")
    lenient = ReplyFormat(think=True)  # the lenient judge of the same protocol normalises the action
    assert parse_answer(THINK_START + "ok</think><answer>x(1,1)</answer>", LEGAL, lenient) == ("<X(1,1)>", None)
    assert judge("ok</think><answer>x(1,1)</answer>")[0] is None


def _step(game, seat, text, **kw):
    return game.step(seat, Reply(text=text, **kw))


def test_the_forced_start_is_the_think_block_and_the_reply_is_recorded_verbatim():
    game = make_game("tictactoe", GameConfig(reply=MARSHAL))
    game.reset(0)
    obs = game.observe(0)
    assert obs.response_prefix == THINK_START == "<think>\n"
    turn = _step(game, 0, "Centre first.</think><answer><X(1,1)></answer>")
    assert turn.legal and turn.action == "<X(1,1)>"
    assert turn.response == "<think>\nCentre first.</think><answer><X(1,1)></answer>"
    game.step(1, Reply(text="", action="<O(0,0)>"))
    history = game.observe(0).messages
    assert history[2] == {"role": "assistant", "content": turn.response}  # earlier thinking kept
    bad = _step(game, 0, "hmm</think><answer><x(0,1)></answer>")
    assert bad.illegal_reason.startswith("illegal") and game.is_over()
    assert [round(r, 9) for r in game.episode([]).returns] == [0.05 - 11.0, 0.05]


def test_a_reply_cut_at_the_turn_budget_loses_as_overlong_response():
    game = make_game("tictactoe", GameConfig(reply=MARSHAL))
    game.reset(0)
    turn = _step(game, 0, "I think and think", finish_reason="length", prompt_token_ids=[1] * 50,
                 completion_token_ids=[2] * 100)
    assert turn.illegal_reason.startswith("over-long: overlong_response") and game.is_over()
    assert game.episode([]).returns == [-11.0, 0.0]


@pytest.mark.parametrize("completion, lost", [(9, False), (10, True), (30, True)])
def test_a_reply_leaving_the_margin_or_less_of_the_context_loses_as_overlong_sequence(completion, lost):
    fmt = ReplyFormat(think=True, match="exact", context_tokens=100, context_margin=10)
    game = make_game("kuhn_poker", GameConfig(reply=fmt))
    game.reset(0)
    turn = _step(game, 0, "pass</think><answer><PASS></answer>", finish_reason="stop", prompt_token_ids=[1] * 80,
                 completion_token_ids=[2] * completion)  # 80 + 10 = 100 - 10: nothing more may follow
    if not lost:
        assert turn.legal and not game.is_over()
        return
    assert turn.action is None and turn.illegal_reason.startswith("over-long: overlong_sequence")
    assert game.episode([]).returns == [-1.0 - 10.0, 0.0]  # Kuhn: the offender's ante, minus 10


def test_the_context_rule_is_off_by_default_and_without_token_ids():
    for fmt in (ReplyFormat(), ReplyFormat(think=True, match="exact")):
        game = make_game("tictactoe", GameConfig(reply=fmt))
        game.reset(0)
        full = "<think>\nok</think><answer><X(1,1)></answer>" if fmt.think else "<answer><X(1,1)></answer>"
        text = full[len(game.observe(0).response_prefix):]
        assert _step(game, 0, text, prompt_token_ids=[1] * 40000, completion_token_ids=[2]).legal
    game = make_game("tictactoe", GameConfig(reply=ReplyFormat(think=True, match="exact", context_tokens=10)))
    game.reset(0)
    assert _step(game, 0, "ok</think><answer><X(1,1)></answer>").legal  # an endpoint without token ids


@pytest.mark.parametrize("name", GAME_NAMES)
def test_the_think_instruction_shows_a_real_action_of_the_seat(name):
    game = make_game(name, GameConfig(reply=MARSHAL))
    game.reset(0)
    for seat in range(game.info.num_players):
        labels = {game.action_label(game.state, seat, a) for a in range(game.spiel.num_distinct_actions())}
        text = game.instructions(seat)
        example = re.findall(r"<answer>(.*?)</answer>", text)[-1]  # after the format's own "<answer>...</answer>"
        assert "{" not in text and example in labels and "<think>...</think><answer>" in text
    first = game.observe(0).messages[1]["content"]
    assert game.instructions(0) in first


def test_the_default_prompts_keep_their_compact_layout():
    game = make_game("tictactoe")
    game.reset(0)
    legal = ", ".join(game.legal_actions(0))
    expected = (f"{game.rules()}\n\nYou play X and move first.\n\nReply with exactly one legal action inside "
                "<answer>...</answer>, e.g. <answer><X(1,1)></answer>.\n\nBoard (rows top to bottom, '.' is "
                f"empty):\n...\n...\n...\nLegal actions: {legal}")
    assert game.observe(0).messages[1]["content"] == expected
    game.step(0, Reply(text="", action="<X(1,1)>"))
    o = game.observe(1).messages[1]["content"]
    assert "You play O; X moves first." in o and o.endswith("X (player 0) chose <X(1,1)>.\nBoard (rows top to "
                                                            "bottom, '.' is empty):\n...\n.x.\n...\nLegal actions: "
                                                            + ", ".join(game.legal_actions(1)))


def test_the_turns_layout_shows_a_board_players_move_with_what_it_faced():
    game = make_game("tictactoe", GameConfig(reply=MARSHAL))
    game.reset(0)
    x_first = game.observe(0).messages[1]["content"]
    assert x_first.startswith("Rules:\nTic-Tac-Toe is played") and "\n\nYou:\nYou play X and move first. The other " \
        "player is O (player 1).\n\nReply format:\n" in x_first
    assert x_first.endswith("Turn 1: your move.\nBoard (rows top to bottom, '.' is empty):\n...\n...\n...\n"
                            f"Legal actions: {', '.join(game.legal_actions(0))}\n"
                            "Choose one of them and reply in the format given above.")
    x_legal = ", ".join(game.legal_actions(0))
    _step(game, 0, "centre</think><answer><X(1,1)></answer>")
    o_first = game.observe(1).messages[1]["content"]
    faced = ("Turn 1: X (player 0) moved.\nWhat it faced:\nBoard (rows top to bottom, '.' is empty):\n...\n...\n"
             f"...\nIts legal actions: {x_legal}\nIt chose: <X(1,1)>")
    assert faced in o_first and o_first.index(faced) < o_first.index("Turn 2: your move.\n")
    assert "<O(0,0)>" in o_first.split("Turn 2: your move.")[1]
    _step(game, 1, "corner</think><answer><O(0,0)></answer>")
    x_second = game.observe(0).messages
    assert [m["role"] for m in x_second] == ["system", "user", "assistant", "user"]
    assert x_second[3]["content"].startswith("Turn 2: O (player 1) moved.\nWhat it faced:\n")
    assert "It chose: <O(0,0)>\n\nTurn 3: your move.\n" in x_second[3]["content"]
    assert "corner" not in str(x_second)  # the other seat's reasoning is never shown


def test_the_turns_layout_shows_only_the_action_where_information_is_hidden():
    game = make_game("kuhn_poker", GameConfig(reply=MARSHAL))
    game.reset(3)
    cards = game.state.history()[:2]
    _step(game, 0, "bluff</think><answer><BET></answer>")
    text = game.observe(1).messages[1]["content"]
    assert ("Turn 1: player_0 (player 0) moved. What it saw is hidden from you.\nIt chose: <BET>\n\nTurn 2: your "
            "move.\n") in text
    assert "What it faced" not in text and f"Your card: {'JQK'[cards[1]]}" in text
    assert f"Your card: {'JQK'[cards[0]]}" not in text and "bluff" not in text
    assert game.legal_actions(1) == {"<PASS>": 0, "<BET>": 1}  # MARSHAL's names facing a bet too
    hanabi = make_game("mini_hanabi", GameConfig(reply=MARSHAL))
    hanabi.reset(0)
    assert "You see your partner's cards, never your own." in hanabi.observe(0).messages[1]["content"]


def test_structured_output_regex_admits_exactly_the_well_formed_legal_replies():
    legal = ["<X(0,2)>", "<Reveal player +1 color R>", "<Play card 0>"]
    rx = think_answer_regex(legal, 20)
    assert rx == (r"[^<]{0,20}</think><answer>(<X\(0,2\)>|<Reveal player \+1 color R>|<Play card 0>)</answer>")
    for ok in ("short\n</think><answer><X(0,2)></answer>", "</think><answer><Reveal player +1 color R></answer>"):
        assert re.fullmatch(rx, ok) and parse_exact(THINK_START + ok, legal, think=True)[1] is None
    for bad in ("a <b> c</think><answer><X(0,2)></answer>", "x" * 21 + "</think><answer><X(0,2)></answer>",
                "ok</think><answer><X(1,1)></answer>", "ok</think><answer><X(0,2)></answer> "):
        assert not re.fullmatch(rx, bad)


def _obs():
    game = make_game("tictactoe", GameConfig(reply=MARSHAL))
    game.reset(0)
    return game.observe(0)


def test_the_agent_sends_the_template_the_regex_and_no_stop_strings():
    sampling = SamplingConfig(stop=[], max_tokens=4096, chat_template="chatml", constrain="think_answer",
                              constrain_think_chars=50)
    agent = make_agent("llm:base", base_url="http://127.0.0.1:9/v1", **sampling.agent_kwargs())
    obs = _obs()
    assert agent.chatml is None and "chat_template" not in agent.request(obs)["extra_body"]  # not asked yet
    agent.chatml = True
    kw = agent.request(obs)
    extra = kw["extra_body"]
    assert kw["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert extra["continue_final_message"] is True and extra["add_generation_prompt"] is False
    assert extra["chat_template"] == chat_template("chatml")
    assert extra["structured_outputs"] == {"regex": think_answer_regex(obs.legal_actions, 50)}
    assert "stop" not in kw and "include_stop_str_in_output" not in extra and kw["max_tokens"] == 4096
    agent.chatml = False  # a model whose own template is not ChatML keeps it
    assert "chat_template" not in agent.request(obs)["extra_body"]
    always = LLMAgent(base_url="http://127.0.0.1:9/v1", chat_template="T", chat_template_only_for_chatml=False)
    assert always.request(obs)["extra_body"]["chat_template"] == "T"


def test_the_default_sampling_sends_nothing_new():
    kw = SamplingConfig().agent_kwargs()
    assert set(kw) == {"temperature", "top_p", "max_tokens", "extra_body", "stop"}
    assert kw["extra_body"] == {"top_k": 100, "include_stop_str_in_output": True}
    off = SamplingConfig(chat_template="chatml", constrain="think_answer", vllm_extensions=False).agent_kwargs()
    assert "chat_template" not in off and "constrain" not in off


async def test_the_agent_asks_the_endpoint_whether_its_template_is_chatml():
    asked = []

    def answer(strs, status=200):
        def handler(request: httpx.Request) -> httpx.Response:
            asked.append((str(request.url), request.headers.get("authorization"), request.content))
            return httpx.Response(status, json={"count": len(strs), "max_model_len": 4096, "tokens": [],
                                                "token_strs": strs})
        return httpx.MockTransport(handler)

    chatml = ["<|im_start|>", "system", "Ċ", "s", "<|im_end|>", "Ċ", "<|im_start|>", "user"]
    assert await served_template_is_chatml("http://h:1/v1", "base", "k", transport=answer(chatml))
    assert asked[0][0] == "http://h:1/tokenize" and asked[0][1] == "Bearer k" and b'"return_token_strs":true' in \
        asked[0][2].replace(b" ", b"")
    assert not await served_template_is_chatml("http://h:1/v1", "base", transport=answer(["[INST]", "u"]))
    assert not await served_template_is_chatml("http://h:1/v1", "base", transport=answer([], status=404))
    assert await served_template_is_chatml("http://a:1/v1,http://b:2/v1", "base", transport=answer(chatml))
    assert asked[-1][0] == "http://a:1/tokenize"


def test_the_chatml_template_keeps_earlier_replies_verbatim(model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    template = chat_template("chatml")
    reply = "<think>\nI take the centre.\n</think><answer><X(1,1)></answer>"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": reply}, {"role": "user", "content": "U2"}]
    text = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n"
                    f"{reply}<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n")
    opened = tok.apply_chat_template(messages + [{"role": "assistant", "content": THINK_START}],
                                     chat_template=template, tokenize=False, continue_final_message=True)
    assert opened == text + "<think>\n"  # the generation prompt ends in an opened think block


def test_a_seats_turns_extend_each_other_with_the_real_tokenizer(model_path):
    """What the server does, with the real tokenizer: each prompt is the chat rendered by the template with the
    forced start as a final assistant message to continue; the completion is the reply's tokens and the end-of-turn
    token. Turn k+1's prompt then starts with turn k's prompt and completion, so the trainer packs the seat's
    turns into one sequence."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    template = chat_template("chatml")

    def prompt_ids(obs):
        text = tok.apply_chat_template(obs.messages + [{"role": "assistant", "content": obs.response_prefix}],
                                       chat_template=template, tokenize=False, continue_final_message=True)
        assert text.endswith("<|im_start|>assistant\n<think>\n")
        return tok(text, add_special_tokens=False).input_ids

    game = make_game("tictactoe", GameConfig(reply=MARSHAL))
    game.reset(0)
    turns = []
    for text, o_move in (("The centre is strongest.\n</think>\n<answer><X(1,1)></answer>", "<O(0,0)>"),
                         ("Take a corner: (2,2).</think><answer><X(2,2)></answer>", "<O(0,1)>"),
                         ("Block the top row.</think><answer><X(0,2)></answer>", None)):
        obs = game.observe(0)
        reply = Reply(text=text, prompt_token_ids=prompt_ids(obs), finish_reason="stop",
                      completion_token_ids=tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id])
        turns.append(game.step(0, reply))
        assert turns[-1].legal
        if o_move:
            game.step(1, Reply(text="", action=o_move))
    for prev, nxt in zip(turns, turns[1:]):
        seen = prev.prompt_token_ids + prev.completion_token_ids
        assert nxt.prompt_token_ids[: len(seen)] == seen

    from stratagem.games.core import Episode, Seat
    from stratagem.training.samples import build_batch

    ep = Episode(game="tictactoe", seed=0, seats=[Seat(index=0, role="X", agent="llm:base"),
                                                   Seat(index=1, role="O", agent="random")],
                 turns=list(game.turns), returns=[0.0, 0.0])
    batch = build_batch([ep], lambda i, j: True)
    assert len(batch.samples) == 1 and len(batch.acts) == 3  # one packed sequence for the seat's three turns


def _flags(cmd):
    return {a: (cmd[i + 1] if i + 1 < len(cmd) and not cmd[i + 1].startswith("--") else None)
            for i, a in enumerate(cmd) if a.startswith("--")}


def test_the_server_context_length_and_request_templates(tmp_path):
    from stratagem.integrations.vllm_server import ServerConfig, VLLMServer

    (tmp_path / "config.json").write_text("{}")

    def flags(**kw):
        return _flags(VLLMServer(ServerConfig(model=str(tmp_path), port=1234, **kw)).command())

    assert flags()["--max-model-len"] == "4096"  # as before
    assert flags(max_model_len=32768)["--max-model-len"] == "32768"
    assert "--max-model-len" not in flags(max_model_len=None)  # the model's own
    assert "--trust-request-chat-template" in flags()  # loopback: only local clients can send a template
    assert "--trust-request-chat-template" not in flags(host="0.0.0.0")
    assert "--trust-request-chat-template" in flags(host="0.0.0.0", trust_request_chat_template="on")
    assert "--trust-request-chat-template" not in flags(trust_request_chat_template="off")


@pytest.mark.parametrize("argv, expected", [([], 4096), (["--max-model-len", "32768"], 32768),
                                            (["--max-model-len", "0"], None)])
def test_serve_takes_the_context_length(monkeypatch, argv, expected):
    from typer.testing import CliRunner

    import stratagem.integrations.vllm_server as vs
    from stratagem.cli import app

    seen = []

    class Fake:
        def __init__(self, config):
            seen.append(config)

        def __enter__(self):
            raise vs.ServerError("not started in this test")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(vs, "VLLMServer", Fake)
    result = CliRunner().invoke(app, ["serve", *argv])
    assert result.exit_code == 1 and seen[0].max_model_len == expected


@pytest.mark.vllm
async def test_a_think_turn_with_structured_outputs_on_the_real_server(vllm_server, model_path):
    """One tic-tac-toe turn of the think protocol with structured outputs on the real server: the reply has the
    constrained shape, parses to a legal action, and the prompt the server saw ends with the forced think block."""
    from transformers import AutoTokenizer

    sampling = SamplingConfig(stop=[], max_tokens=300, chat_template="chatml", constrain="think_answer",
                              constrain_think_chars=120)
    agent = make_agent("llm:base", base_url=vllm_server.base_url, **sampling.agent_kwargs())
    try:
        game = make_game("tictactoe", GameConfig(reply=MARSHAL))
        game.reset(0)
        obs = game.observe(0)
        reply = await agent.act(obs)
        assert agent.chatml is True  # SmolLM2's own template is ChatML: Stratagem's was sent
        turn = game.step(0, reply)
        assert re.fullmatch(r"<think>\n[^<]{0,120}</think><answer><X\(\d,\d\)></answer>", turn.response), turn.response
        assert turn.legal and turn.action in obs.legal_actions and reply.finish_reason == "stop"
        tok = AutoTokenizer.from_pretrained(model_path)
        assert tok.decode(reply.prompt_token_ids).endswith("<|im_start|>assistant\n<think>\n")
        assert reply.completion_token_ids[-1] == tok.eos_token_id  # the reply ran to the end of the turn
        game.step(1, Reply(text="", action=next(a for a in game.legal_actions(1))))
        reply2 = await agent.act(game.observe(0))
        assert game.step(0, reply2).legal
        seen = reply.prompt_token_ids + reply.completion_token_ids
        canonical = tok(reply.text, add_special_tokens=False).input_ids + [tok.eos_token_id]
        if reply.completion_token_ids == canonical:  # sampled as the tokenizer writes it: the turns extend
            assert reply2.prompt_token_ids[: len(seen)] == seen
        else:
            assert reply2.prompt_token_ids[: len(reply.prompt_token_ids)] == reply.prompt_token_ids
    finally:
        await agent.aclose()
