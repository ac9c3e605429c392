"""Exact evaluation: decision points replayed through the real games, known exploitability values, a scripted
policy's table against OpenSpiel's own computation, forfeits counted as played, the CLI on bots, and (vllm) the
default model's Kuhn table from the real server, cross-checked against the log-probs of a sampled reply."""

from __future__ import annotations

import json
import math

import pyspiel
import pytest

from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import ReplyFormat
from stratagem.integrations.exact_eval import (
    DecisionPoint,
    PolicyTable,
    bot_table,
    canonical_reply,
    decision_points,
    exact_metrics,
    expected_returns,
    policy_table,
)

STOP = SamplingConfig().stop  # the training protocol's: '>' and newline


def test_known_values_of_the_uniform_random_cfr_and_nash_policies():
    """Uniform random: exploitability 0.4583 (NashConv 0.9167) in Kuhn, 2.3736 in Leduc. The CFR table's number is
    OpenSpiel's own for the solver's average policy; Nash against Nash is the game's value (Kuhn -1/18, Leduc
    -0.0856 for the first seat)."""
    kuhn = exact_metrics("kuhn_poker", bot_table("kuhn_poker", "random"))
    assert kuhn["exploitability"] == pytest.approx(0.458333, abs=1e-5)
    assert kuhn["nash_conv"] == pytest.approx(0.916667, abs=1e-5) and kuhn["information_states"] == 12
    leduc = exact_metrics("leduc_poker", bot_table("leduc_poker", "random"))
    assert leduc["exploitability"] == pytest.approx(2.373611, abs=1e-5) and leduc["information_states"] == 936
    solver = pyspiel.CFRSolver(pyspiel.load_game("kuhn_poker"))
    for _ in range(1000):
        solver.evaluate_and_update_policy()
    want = pyspiel.exploitability(pyspiel.load_game("kuhn_poker"), solver.average_policy())
    assert exact_metrics("kuhn_poker", bot_table("kuhn_poker", "cfr"))["exploitability"] == pytest.approx(want, abs=1e-9)
    for game, value in (("kuhn_poker", -1 / 18), ("leduc_poker", -0.085606)):
        nash = bot_table(game, "nash")
        v = expected_returns(game, [nash, nash])
        assert v[0] == pytest.approx(value, abs=1e-4) and v[0] + v[1] == pytest.approx(0.0, abs=1e-12)


def test_decision_points_are_the_games_own_prompts_one_per_information_state():
    points = decision_points("kuhn_poker", ReplyFormat(), STOP)
    assert len(points) == 12 and {p.seat for p in points.values()} == {0, 1}
    root = points["0"]  # player 0 holds the jack, nothing bet yet
    assert root.seat == 0 and root.legal == {"<PASS>": 0, "<BET>": 1} and root.response_prefix == "<answer><"
    assert "Your card: J" in root.messages[-1]["content"]
    later = points["1pb"]  # player 0 with the queen passed, player 1 bet: its own earlier reply is in the chat
    assert [m["role"] for m in later.messages] == ["system", "user", "assistant", "user"]
    assert later.messages[2]["content"] == "<answer><PASS>" and "Your card: Q" in later.messages[1]["content"]
    assert canonical_reply(ReplyFormat(), STOP, ["<PASS>", "<BET>"], "<BET>") == "BET>"
    assert canonical_reply(ReplyFormat(), [], ["<PASS>", "<BET>"], "<BET>") == "BET></answer>"
    with pytest.raises(ValueError, match="has no table"):
        canonical_reply(ReplyFormat(think=True, response_prefix=""), [], ["<BET>"], "<BET>")
    with pytest.raises(ValueError, match="does not start with the forced prefix"):
        canonical_reply(ReplyFormat(response_prefix="<answer><X("), STOP, ["<PASS>", "<BET>"], "<BET>")


class ScriptedScorer:
    """Reads the card from the prompt: bet 0.9 / pass 0.05 with the king (0.05 outside the legal actions), else
    bet 0.2 / pass 0.8."""

    def __init__(self):
        self.seen = []

    async def logprobs(self, point: DecisionPoint, completions: dict[str, str]) -> dict[str, float]:
        self.seen.append(completions)
        first = next(m["content"] for m in point.messages if m["role"] == "user")
        king = "Your card: K" in first
        p = {"<BET>": 0.9, "<PASS>": 0.05} if king else {"<BET>": 0.2, "<PASS>": 0.8}
        return {lab: math.log(p[lab]) for lab in completions}


async def test_a_scripted_policys_table_gives_openspiels_exploitability_of_the_same_policy():
    fmt = ReplyFormat()
    scorer = ScriptedScorer()
    points = decision_points("kuhn_poker", fmt, STOP)
    table = await policy_table("kuhn_poker", points, scorer, fmt, STOP)
    assert scorer.seen[0] == {"<PASS>": "PASS>", "<BET>": "BET>"}
    # the same policy written directly over OpenSpiel's information states (their first character is the card)
    bets = {key: (0.9 / 0.95 if key[0] == "2" else 0.2) for key in points}
    direct = pyspiel.TabularPolicy({key: [(0, 1 - b), (1, b)] for key, b in bets.items()})
    want = pyspiel.exploitability(pyspiel.load_game("kuhn_poker"), direct)
    got = exact_metrics("kuhn_poker", table)
    assert got["exploitability"] == pytest.approx(want, abs=1e-9) and want > 0.05
    assert table.legal_mass["2"] == pytest.approx(0.95) and table.legal_mass["0"] == pytest.approx(1.0)
    assert got["illegal_prob_max"] == pytest.approx(0.05) and got["illegal_prob_mean"] == pytest.approx(0.05 * 4 / 12)
    assert got["vs_cfr_as_played"]["first"] < got["vs_cfr"]["first"]  # the king's 5% outside forfeits chips


def test_an_illegal_move_as_played_forfeits_the_chips_in_the_pot():
    """Hand example: seat 0 passes, but half its mass at the root falls outside the legal actions (a forfeit:
    -1, its ante); seat 1 always passes, so the other half reaches a showdown worth 0 by symmetry. E = -0.5."""
    game = "kuhn_poker"
    keys = bot_table(game, "random").table
    seat0 = PolicyTable(game, {k: {0: 1.0, 1: 0.0} for k in keys}, {k: 0.5 for k in keys if len(k) == 1})
    seat1 = PolicyTable(game, {k: {0: 1.0, 1: 0.0} for k in keys})
    assert expected_returns(game, [seat0, seat1], forfeit_illegal=True) == pytest.approx([-0.5, 0.5])
    assert expected_returns(game, [seat0, seat1]) == pytest.approx([0.0, 0.0])


async def test_the_trainer_scorer_with_its_cache_equals_a_full_forward_of_each_reply(model_path):
    """Kuhn on the default model: each action's log-prob from the cached, prompt-ordered scorer equals one
    uncached forward of prompt + reply, with the last factor summed over every vocabulary token that starts with
    the last token's text (generation stops inside it at the '>')."""
    import torch

    from stratagem.integrations.exact_eval import TrainerScorer

    scorer = TrainerScorer.from_pretrained(model_path, None, SamplingConfig())
    fmt = ReplyFormat()
    points = decision_points("kuhn_poker", fmt, STOP)
    table = await policy_table("kuhn_poker", points, scorer, fmt, STOP, batched=False)  # point by point
    tok, model = scorer.tok, scorer.model
    vocab = [tok.decode([i]) for i in range(len(tok))]
    for key in ("0", "2", "1pb", "2b"):
        point = points[key]
        prompt = scorer.render(point)
        probs = {}
        for label, a in point.legal.items():
            tail = tok(canonical_reply(fmt, STOP, list(point.legal), label), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + tail])).logits[0].float(), -1)
            rows = lp[len(prompt) - 1: len(prompt) + len(tail) - 1]
            total = sum(float(rows[j, t]) for j, t in enumerate(tail[:-1]))
            stops = [i for i, text in enumerate(vocab) if text.startswith(tok.decode([tail[-1]]))]
            probs[a] = math.exp(total + float(torch.logsumexp(rows[-1, stops], 0)))
        mass = sum(probs.values())
        assert table.legal_mass[key] == pytest.approx(mass, abs=1e-5)
        for a, p in probs.items():
            assert table.table[key][a] == pytest.approx(p / mass, abs=1e-5)
    # one forward per prompt (from the start it shares with the one before) and one per action for its later tokens
    assert scorer.requests == len(points) + sum(len(p.legal) for p in points.values())


def _assert_same_table(got: PolicyTable, want: PolicyTable, tol: float = 1e-5) -> None:
    assert set(got.table) == set(want.table)
    for key, row in want.table.items():
        assert set(got.table[key]) == set(row), key
        for a, p in row.items():
            assert got.table[key][a] == pytest.approx(p, abs=tol), (key, a)
        assert got.legal_mass[key] == pytest.approx(want.legal_mass[key], abs=tol), key


def _largest_gap(a: PolicyTable, b: PolicyTable, keys=None) -> float:
    return max(abs(a.table[k][x] - b.table[k][x]) for k in (keys or a.table) for x in a.table[k])


@pytest.mark.parametrize("stop", [STOP, []], ids=["stop", "no-stop"])
async def test_score_all_gives_the_table_of_the_per_point_path(model_path, monkeypatch, stop):
    """Kuhn on the default model (float32), in the training protocol (each reply ends at the stop string '>': its
    last factor is the mass of every vocabulary token that starts with the last token's text) and without stop
    strings (the reply ends with '</answer>': its last token's own log-prob): the table `score_all` gives from a few
    token-tree forwards equals the point-by-point table, probability by probability."""
    from stratagem.integrations.exact_eval import TrainerScorer

    sampling, fmt = SamplingConfig(stop=list(stop)), ReplyFormat()
    base = TrainerScorer.from_pretrained(model_path, None, sampling)
    points = decision_points("kuhn_poker", fmt, stop)
    want = await policy_table("kuhn_poker", points, base, fmt, stop, batched=False)
    # a budget of one prompt and a little more: the sequences fall into several trees
    scorer = TrainerScorer(base.model, base.tok, sampling, budget=max(len(base.render(p)) for p in points.values()) + 8)
    summed: list[str] = []
    starting_with = scorer._starting_with
    monkeypatch.setattr(scorer, "_starting_with", lambda text: summed.append(text) or starting_with(text))
    ticks: list[int] = []
    got = await policy_table("kuhn_poker", points, scorer, fmt, stop, on_point=lambda: ticks.append(1))
    _assert_same_table(got, want)
    replies = sum(len(p.legal) for p in points.values())
    assert len(ticks) == len(points) and 1 < scorer.requests < replies
    if stop:  # the vocabulary sum was taken, once per reply
        assert len(summed) == replies and set(summed) == {">"}
    else:
        assert summed == [] and canonical_reply(fmt, stop, ["<PASS>", "<BET>"], "<BET>") == "BET></answer>"


async def test_score_all_scores_through_each_seats_lora_adapter(model_path):
    """A PeftModel with two adapters of random, non-zero weights, one per seat (a SeatScorer whose scorers each put
    their adapter in place, as a trainer's per-role adapters are scored): the table from `score_all` equals the
    point-by-point table; it is not the base model's (adapters disabled), and at the second seat's points not the
    first adapter's, so each seat's adapter is in the tree forward."""
    from functools import partial

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stratagem.integrations.exact_eval import SeatScorer, TrainerScorer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_path)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, lora, adapter_name="seat0")
    peft_model.add_adapter("seat1", lora)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (the identity)
            torch.nn.init.normal_(p, std=0.05)
    peft_model.eval()
    sampling, fmt = SamplingConfig(), ReplyFormat()
    points = decision_points("kuhn_poker", fmt, STOP)

    def scorer(seat: int) -> TrainerScorer:
        return TrainerScorer(peft_model, tok, sampling, activate=partial(peft_model.set_adapter, f"seat{seat}"))

    def per_role() -> SeatScorer:
        return SeatScorer({s: scorer(s) for s in (0, 1)})

    want = await policy_table("kuhn_poker", points, per_role(), fmt, STOP, batched=False)
    got = await policy_table("kuhn_poker", points, per_role(), fmt, STOP)
    _assert_same_table(got, want)
    first = await policy_table("kuhn_poker", points, scorer(0), fmt, STOP)  # the first seat's adapter everywhere
    with peft_model.disable_adapter():
        bare = await policy_table("kuhn_poker", points, TrainerScorer(peft_model, tok, sampling), fmt, STOP)
    seat = {s: [k for k, p in points.items() if p.seat == s] for s in (0, 1)}
    assert _largest_gap(got, bare) > 1e-3
    assert _largest_gap(got, first, seat[0]) < 1e-5 and _largest_gap(got, first, seat[1]) > 1e-3


def test_cli_eval_exact_on_bots_needs_no_server():
    from typer.testing import CliRunner

    from stratagem.cli import app

    r = CliRunner().invoke(app, ["eval", "exact", "--models", "random", "--games", "kuhn_poker", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["models"]["random"]["kuhn_poker"]["exploitability"] == pytest.approx(0.4583, abs=1e-4)
    r = CliRunner().invoke(app, ["eval", "exact", "--models", "random", "--games", "connect_four"])
    assert r.exit_code == 1 and "exact evaluation covers kuhn_poker, leduc_poker, tictactoe" in r.output
    r = CliRunner().invoke(app, ["eval", "exact", "--models", "random", "--games", "tictactoe", "--json"])
    assert r.exit_code == 0, r.output
    ttt = json.loads(r.stdout.strip().splitlines()[-1])["models"]["random"]["tictactoe"]
    assert ttt["information_states"] == 647 and ttt["scope"].startswith("below 6 openings")


# ---- tic-tac-toe below openings ----------------------------------------------------------------------------------

# X0 O4 X8 O1 X7 O6 X2: O to move with cells 3 and 5 left. O at 3 lets X complete the column 2-5-8 (X wins); O at 5
# blocks it and X's forced 3 fills the board (a draw). X's moves there are forced (one legal cell).
LATE = (0, 4, 8, 1, 7, 6, 2)


def test_the_whole_tic_tac_toe_tree_has_the_decision_points_the_module_says():
    from stratagem.integrations.exact_eval import FULL_TREE_POINTS

    memo: dict[str, int] = {}

    def points(state) -> int:  # non-terminal histories from here on: a function of the board alone
        key = str(state)
        if key not in memo:
            memo[key] = 0 if state.is_terminal() else 1 + sum(points(state.child(a)) for a in state.legal_actions())
        return memo[key]

    assert points(pyspiel.load_game("tic_tac_toe").new_initial_state()) == FULL_TREE_POINTS["tictactoe"]


def test_the_tree_estimate_finds_the_counts_the_walks_give():
    """Knuth's estimator is unbiased: on Kuhn (6 deals x 4 decision histories = 24) and on tic-tac-toe below the
    openings (647, the walk's count) its mean lies within four standard errors of the exact count."""
    from stratagem.integrations.exact_eval import estimate_tree_points

    for game, exact in (("kuhn_poker", 24), ("tictactoe", 647)):
        est = estimate_tree_points(game, 4000)
        assert abs(est["mean"] - exact) < 4 * est["stderr"] and est["stderr"] < 0.05 * exact


def test_tree_metrics_hand_example(monkeypatch):
    """Below LATE, the policy as O plays 3 (the losing cell) with probability 0.25 and has 0.8 of its mass on the
    legal replies. As X (first) its moves are forced: +0.5 against random O, 0 against the best response (O at 5).
    As O (second): -0.25 against anyone (X is forced), -0.8 * 0.25 - 0.2 = -0.4 as played. Perfect play draws
    both ways, so the best-response gap is 0 - (0 - 0.25) / 2 = 0.125."""
    import stratagem.integrations.exact_eval as ee

    monkeypatch.setitem(ee.OPENINGS, "tictactoe", (LATE,))
    o_node = ", ".join(map(str, LATE))
    table = {o_node: {3: 0.25, 5: 0.75}, o_node + ", 3": {5: 1.0}, o_node + ", 5": {3: 1.0}}
    policy = PolicyTable("tictactoe", table, {o_node: 0.8, o_node + ", 3": 1.0, o_node + ", 5": 1.0})
    assert set(ee.decision_points("tictactoe", ReplyFormat(), STOP)) == set(table)
    m = ee.tree_metrics("tictactoe", policy)
    assert m["vs_random"]["first"] == pytest.approx(0.5) and m["vs_best_response"]["first"] == pytest.approx(0.0)
    assert m["vs_random"]["second"] == pytest.approx(-0.25) and m["vs_best_response"]["second"] == pytest.approx(-0.25)
    assert m["vs_random_as_played"]["second"] == pytest.approx(-0.4)
    assert m["optimal"] == {"first": 0.0, "second": 0.0, "mean": 0.0}
    assert m["best_response_gap"] == pytest.approx(0.125)
    assert m["illegal_prob_max"] == pytest.approx(0.2)


def test_tic_tac_toe_points_below_the_openings_are_the_games_own_prompts():
    from stratagem.integrations.exact_eval import OPENINGS, tree_metrics

    points = decision_points("tictactoe", ReplyFormat(), STOP)
    assert len(points) == 647 and all(p.key.count(",") >= 3 for p in points.values())
    for opening in OPENINGS["tictactoe"]:
        root = points[", ".join(map(str, opening))]
        assert root.seat == 0 and len(root.legal) == 5  # X to move, five empty cells
        # the board the seat is shown: four marks of the opening, X's and O's where they were played
        board = root.messages[-1]["content"].split("Board")[1].splitlines()[1:4]
        marks = {3 * r + c: ch.upper() for r, row in enumerate(board) for c, ch in enumerate(row)}
        assert {i for i, ch in marks.items() if ch == "X"} == set(opening[0::2])
        assert {i for i, ch in marks.items() if ch == "O"} == set(opening[1::2])
    # perfect play against perfect play below the openings: what minimax says; random: the policy's own mean is 0
    m = tree_metrics("tictactoe", bot_table("tictactoe", "random"))
    assert m["optimal"]["first"] == -m["optimal"]["second"] and m["best_response_gap"] > 0
    assert m["vs_random"]["mean"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="random only"):
        bot_table("tictactoe", "cfr")


async def test_the_default_models_tic_tac_toe_table_below_a_late_opening(model_path, monkeypatch):
    """The real model scores the three decision points below LATE: its table is a distribution over the legal cells
    at each; at a forced point the forced reply prefix already holds the one legal cell, so it is played for sure."""
    import stratagem.integrations.exact_eval as ee

    monkeypatch.setitem(ee.OPENINGS, "tictactoe", (LATE,))
    points = ee.decision_points("tictactoe", ReplyFormat(), STOP)
    scorer = ee.TrainerScorer.from_pretrained(model_path, None, SamplingConfig())
    table = await policy_table("tictactoe", points, scorer, ReplyFormat(), STOP)
    o_node = ", ".join(map(str, LATE))
    assert set(table.table[o_node]) == {3, 5} and sum(table.table[o_node].values()) == pytest.approx(1.0)
    assert table.table[o_node + ", 3"] == {5: 1.0} and table.legal_mass[o_node + ", 3"] == 1.0
    assert 0 < table.legal_mass[o_node] <= 1
    m = ee.tree_metrics("tictactoe", table)
    assert m["vs_best_response"]["first"] == 0.0 and -1 <= m["vs_random_as_played"]["second"] <= 0


@pytest.mark.vllm
def test_the_default_models_kuhn_table_from_the_real_server(vllm_server, tmp_path):
    """`stratagem eval exact` on the default model: a table over all 12 information states, and at the king's root
    the table's log-prob of the action the model samples greedily agrees with the log-probs the server reported for
    the tokens it generated (the scorer renders the chat as sampling does)."""
    import asyncio

    from typer.testing import CliRunner

    from stratagem.agents.llm import LLMAgent
    from stratagem.cli import app
    from stratagem.games.core import Observation
    from stratagem.integrations.exact_eval import VLLMScorer

    r = CliRunner().invoke(app, ["eval", "exact", "--models", "base,cfr", "--games", "kuhn_poker", "--base-url",
                                 vllm_server.base_url, "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout.strip().splitlines()[-1])["models"]["base"]["kuhn_poker"]
    assert m["information_states"] == 12 and m["requests"] > 12
    assert 0.0 < m["exploitability"] <= 2.0 and 0.0 <= m["illegal_prob_mean"] < 1.0
    tables = list(tmp_path.glob("policy-base-kuhn_poker-*.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())["table"]
    assert all(abs(sum(row.values()) - 1.0) < 1e-9 for row in table.values())

    point = decision_points("kuhn_poker", ReplyFormat(), STOP)["2"]

    async def check():
        sampling = SamplingConfig(temperature=0.0)
        agent = LLMAgent(**{**sampling.agent_kwargs(), "model": "base", "base_url": vllm_server.base_url})
        obs = Observation(game="kuhn_poker", seat=0, role="player_0", phase="play", messages=point.messages,
                          legal_actions=list(point.legal), response_prefix=point.response_prefix)
        reply = await agent.act(obs)
        await agent.aclose()
        scorer = VLLMScorer(vllm_server.base_url, "base", SamplingConfig())
        try:
            label = "<" + reply.text if ("<" + reply.text) in point.legal else None
            lps = await scorer.logprobs(point, {label: reply.text}) if label else {}
        finally:
            await scorer.aclose()
        return reply, label, lps

    reply, label, lps = asyncio.run(check())
    if label is None:
        pytest.skip(f"the greedy reply {reply.text!r} is not a legal action: nothing to compare")
    # the sampled path is one way to write the action (its last token may run past the '>' where generation
    # stops); the table's number adds the other tokens that stop there, so it lies between the path's probability
    # and that of the path without its last token: a misrendered prompt would miss both bounds
    assert sum(reply.logprobs) - 1e-3 <= lps[label] <= sum(reply.logprobs[:-1]) + 1e-3

    # the same table from the model loaded here (exact over the vocabulary) agrees with the server's
    r = CliRunner().invoke(app, ["eval", "exact", "--models", "base", "--games", "kuhn_poker", "--source",
                                 "trainer", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    here = json.loads(r.stdout.strip().splitlines()[-1])["models"]["base"]["kuhn_poker"]
    assert here["exploitability"] == pytest.approx(m["exploitability"], abs=0.02)
    assert here["illegal_prob_mean"] == pytest.approx(m["illegal_prob_mean"], abs=0.02)
    assert len(list(tmp_path.glob("policy-base-kuhn_poker-*.json"))) == 2  # one table per source


def test_a_per_role_policy_scores_each_seat_with_its_roles_adapter(model_path, tmp_path):
    """`eval exact --per-role --source trainer --run RUN --models iter-1`: seat s's information states are scored by
    RUN/adapters/iter-1/player_s, so the per-role table is, state by state, the table of that seat's adapter alone
    (two distinct synthetic adapters, so a mix-up would show)."""
    from helpers_lora import make_adapter
    from typer.testing import CliRunner

    from stratagem.cli import app

    for seat in (0, 1):
        make_adapter(model_path, tmp_path / "run" / "adapters" / "iter-1" / f"player_{seat}", seed=seat,
                     scale=0.05)
    import yaml

    from stratagem.training.run_config import RunConfig

    run_cfg = RunConfig.from_dict({"loop": {"games": ["kuhn_poker"]}, "trainer": {"adapters": "per_role"}})
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(run_cfg.to_dict()))  # the run's reply protocol
    out = tmp_path / "exact"

    def table(*args):
        r = CliRunner().invoke(app, ["eval", "exact", "--games", "kuhn_poker", "--source", "trainer", "--run",
                                     str(tmp_path / "run"), "--out", str(out), "--json", *args])
        assert r.exit_code == 0, r.output
        model = args[args.index("--models") + 1]
        [path] = out.glob(f"policy-{model}-kuhn_poker-*.json")  # iter-1-player_0's is policy-iter-1-player_0-...
        return json.loads(path.read_text())["table"]

    mixed = table("--models", "iter-1", "--per-role")
    alone = {s: table("--models", f"iter-1-player_{s}") for s in (0, 1)}
    points = decision_points("kuhn_poker", ReplyFormat(), STOP)
    assert set(mixed) == set(points) and len(mixed) == 12
    for key, point in points.items():
        for a, p in mixed[key].items():
            # 1e-4: the cache continues from other prefixes in the other order (float32 sums, ~2e-6 apart)
            assert p == pytest.approx(alone[point.seat][key][a], abs=1e-4), (key, point.seat)
    assert any(abs(alone[0][k][a] - alone[1][k][a]) > 1e-3 for k in mixed for a in mixed[k])  # the premise
