"""Game evaluation: the paper's default opponents, the training reply protocol (from a run's config or flags), a
full run with bots in the model's seat, and (vllm) the default model's illegal-act rate in that protocol."""

from __future__ import annotations

import json

import pytest
import yaml

from stratagem.agents.sampling import SamplingConfig
from stratagem.games.base import ReplyFormat
from stratagem.games.core import Episode, Observation
from stratagem.integrations import games_eval
from stratagem.integrations.games_eval import (
    GamesEvalConfig,
    model_agent,
    opponent_for,
    opponents_for,
    parse_stop,
    plan,
    run_games_eval,
    run_protocol,
)

SIX = ["tictactoe", "kuhn_poker", "mini_hanabi", "connect_four", "leduc_poker", "simple_hanabi"]


@pytest.mark.parametrize("game,perfect,coop,expected", [
    ("tictactoe", True, False, "mcts:100"),      # MARS: MCTS, 100 simulations (also 1000 in the paper)
    ("connect_four", True, False, "mcts:100"),   # MARS: MCTS, 100 simulations (also 10)
    ("kuhn_poker", False, False, "cfr"),         # MARS: the CFR average policy
    ("leduc_poker", False, False, "nash"),       # MARS: a Nash-equilibrium table (here: the sequence-form LP's)
    ("mini_hanabi", False, True, "self"),        # cooperative: the model with itself
    ("simple_hanabi", False, True, "self"),
])
def test_each_default_opponent_is_the_papers(game, perfect, coop, expected):
    assert opponent_for(GamesEvalConfig(), game, perfect, coop) == expected


def test_opponent_overrides_and_errors():
    assert opponent_for(GamesEvalConfig(mcts_simulations=1000), "tictactoe", True) == "mcts:1000"
    assert opponent_for(GamesEvalConfig(mcts_simulations=10), "kuhn_poker", False) == "cfr"
    cfg = GamesEvalConfig(opponent="connect_four=mcts:3, leduc_poker=random")
    assert opponent_for(cfg, "connect_four", True) == "mcts:3" and opponent_for(cfg, "leduc_poker", False) == "random"
    assert opponent_for(cfg, "tictactoe", True) == "mcts:100"  # a game left out gets the paper's opponent
    assert opponent_for(GamesEvalConfig(opponent="random"), "simple_hanabi", False, True) == "self"
    with pytest.raises(ValueError, match="MCTS needs perfect information"):
        opponent_for(GamesEvalConfig(opponent="mcts:5"), "leduc_poker", False)
    with pytest.raises(ValueError, match="cfr policies exist for"):
        opponent_for(GamesEvalConfig(opponent="cfr"), "tictactoe", True)
    with pytest.raises(ValueError, match="expected auto, self"):
        opponent_for(GamesEvalConfig(opponent="alphazero"), "tictactoe", True)


def test_the_default_plan_covers_all_six_games_in_both_seat_orders():
    mus = plan(GamesEvalConfig(models=["base", "iter-2"]))
    assert sorted({m.game for m in mus}) == sorted(SIX)
    by = {(m.model, m.game, tuple(m.seats)): m for m in mus}
    assert len(mus) == 2 * (4 * 2 + 2)  # 4 competitive games x 2 seat orders + 2 cooperative, per model
    first, second = by["base", "leduc_poker", ("first",)], by["base", "leduc_poker", ("second",)]
    assert first.specs == ["llm:base", "nash"] and first.seats == {"first": 0}
    assert second.specs == ["nash", "llm:base"] and second.seats == {"second": 1}
    team = by["iter-2", "simple_hanabi", ("team",)]
    assert team.specs == ["llm:iter-2", "llm:iter-2"] and team.cooperative and team.utility[1] > 0
    assert by["base", "tictactoe", ("first",)].utility == (-1.0, 1.0)
    selfplay = plan(GamesEvalConfig(games=["kuhn_poker"], opponent="self"))
    assert [(m.specs, m.seats) for m in selfplay] == [(["llm:base", "llm:base"], {"first": 0, "second": 1})]
    with pytest.raises(ValueError, match="eval mystery"):
        plan(GamesEvalConfig(games=["mystery"]))
    with pytest.raises(ValueError, match="unknown game 'chess'"):
        plan(GamesEvalConfig(games=["chess"]))


def test_marshal_opponent_set_is_its_evaluation_tags():
    """MARSHAL's examples/model_game_eval/agentic_rollout_eval.yaml: TicTacToe-{first,second}-{100,1000},
    Connect4-{first,second}-{10,100}, KuhnPoker (cfr), LeducPoker (ne), MiniHanabi, SimpleHanabi."""
    cfg = GamesEvalConfig(opponent="marshal")
    assert opponents_for(cfg, "tictactoe", True) == ["mcts:100", "mcts:1000"]
    assert opponents_for(cfg, "connect_four", True) == ["mcts:10", "mcts:100"]
    assert opponents_for(cfg, "kuhn_poker", False) == ["cfr"] and opponents_for(cfg, "leduc_poker", False) == ["nash"]
    assert opponents_for(cfg, "mini_hanabi", False, True) == ["self"]
    mus = plan(cfg)
    keys = {(m.key, m.game, tuple(m.seats), m.opponent) for m in mus}
    assert ("tictactoe", "tictactoe", ("second",), "mcts:100") in keys
    assert ("tictactoe@mcts:1000", "tictactoe", ("first",), "mcts:1000") in keys
    assert ("connect_four", "connect_four", ("first",), "mcts:10") in keys  # the first named is the game's own key
    assert ("connect_four@mcts:100", "connect_four", ("second",), "mcts:100") in keys
    assert len(mus) == 2 * 2 + 2 * 2 + 2 + 2 + 1 + 1  # 15 settings minus MARSHAL's FullHanabi, which has no game here
    with pytest.raises(ValueError, match="names an opponent twice"):
        opponents_for(GamesEvalConfig(opponent="tictactoe=mcts:5|mcts:5"), "tictactoe", True)
    with pytest.raises(ValueError, match="MCTS needs perfect information"):
        opponents_for(GamesEvalConfig(opponent="kuhn_poker=cfr|mcts:5"), "kuhn_poker", False)


async def test_several_opponents_of_one_game_are_played_and_kept_apart(monkeypatch, tmp_path):
    from stratagem.agents import make_agent

    monkeypatch.setattr(games_eval, "model_agent", lambda model, cfg: make_agent("random", seed=7))
    cfg = GamesEvalConfig(models=["base"], games=["tictactoe", "leduc_poker"],
                          opponent="tictactoe=random|mcts:2,leduc_poker=nash|cfr", episodes=2, out=str(tmp_path))
    result = await run_games_eval(cfg)
    games = result["models"]["base"]
    assert set(games) == {"tictactoe", "tictactoe@mcts:2", "leduc_poker", "leduc_poker@cfr"}
    assert games["tictactoe"]["first"]["opponent"] == "random"
    assert games["tictactoe@mcts:2"]["second"]["opponent"] == "mcts:2"
    assert (tmp_path / "base" / "tictactoe@mcts-2-first.jsonl").is_file()
    ex = result["opponent_exploitability"]
    assert set(ex) == {"leduc_poker:nash", "leduc_poker:cfr"}  # bots without a table have none
    assert ex["leduc_poker:nash"] < 1e-6 < ex["leduc_poker:cfr"] < 0.05  # the LP is exact, CFR near


def test_the_model_replies_in_the_training_protocol():
    agent = model_agent("iter-3", GamesEvalConfig(base_url="http://127.0.0.1:9/v1"))
    obs = Observation(game="tictactoe", seat=0, role="X", phase="play", messages=[{"role": "user", "content": "go"}],
                      legal_actions=["<X(0,0)>"], response_prefix="<answer><X(")
    kw = agent.request(obs)
    assert (kw["model"], kw["temperature"], kw["top_p"], kw["max_tokens"], kw["stop"]) == \
        ("iter-3", 0.6, 0.99, 48, [">", "\n"])
    assert kw["extra_body"]["top_k"] == 100 and kw["extra_body"]["include_stop_str_in_output"] is True
    assert kw["messages"][-1] == {"role": "assistant", "content": "<answer><X("}
    assert "seed" not in kw  # unseeded, as in training: identical openings must not give identical replies


def test_run_protocol_reads_a_runs_sections_and_tolerates_their_absence(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.yaml").write_text(yaml.safe_dump({
        "loop": {"games": ["tictactoe"]}, "sampling": {"temperature": 1.0, "max_tokens": 64, "stop": [">"]},
        "reply": {"response_prefix": "<answer>", "open_answer": False}}))
    s, r = run_protocol(tmp_path / "new")
    assert (s.temperature, s.max_tokens, s.stop, s.top_p) == (1.0, 64, [">"], 0.99)
    assert (r.response_prefix, r.open_answer, r.think) == ("<answer>", False, False)
    (tmp_path / "old").mkdir()  # a run written before the sampling / reply sections: loop held the fields
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({"loop": {"max_tokens": 32, "temperature": 0.9,
                                                                          "response_prefix": "", "algo": "mars"}}))
    s, r = run_protocol(tmp_path / "old")
    assert (s.max_tokens, s.temperature, r.response_prefix, r.open_answer) == (32, 0.9, "", True)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"lr": 1e-4}}))
    assert run_protocol(tmp_path / "bare") == (SamplingConfig(), ReplyFormat())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text(yaml.safe_dump({"sampling": {"max_tokens": "many"}}))
    with pytest.raises(ValueError, match="sampling.max_tokens"):
        run_protocol(tmp_path / "bad")
    with pytest.raises(ValueError, match="no config.yaml"):
        run_protocol(tmp_path / "missing")


def test_parse_stop():
    assert parse_stop([">", "\\n"]) == [">", "\n"]
    assert parse_stop(["none"]) == []


async def test_run_games_eval_with_bots(monkeypatch, tmp_path):
    from stratagem.agents import make_agent

    monkeypatch.setattr(games_eval, "model_agent", lambda model, cfg: make_agent("random", seed=7))
    cfg = GamesEvalConfig(models=["base"], games=["connect_four", "leduc_poker", "simple_hanabi"],
                          opponent="connect_four=mcts:2,leduc_poker=random", episodes=2, out=str(tmp_path))
    result = await run_games_eval(cfg)
    games = result["models"]["base"]
    assert set(games["connect_four"]) == {"first", "second"} and set(games["simple_hanabi"]) == {"team"}
    assert games["connect_four"]["first"]["opponent"] == "mcts:2"
    assert games["leduc_poker"]["second"]["opponent"] == "random"
    assert games["simple_hanabi"]["team"]["opponent"] == "llm:base"
    assert result["sampling"]["temperature"] == 0.6 and result["reply"]["response_prefix"] == "<answer>{legal_prefix}"
    for seats in games.values():
        for s in seats.values():
            assert s["n"] == 2 and s["wins"] + s["draws"] + s["losses"] == 2
            assert s["model_turns"] == 0 and s["illegal_rate"] == 0.0  # a bot sat in the model's seat
    lines = (tmp_path / "base" / "connect_four-first.jsonl").read_text().splitlines()
    assert len(lines) == 2 and Episode.from_dict(json.loads(lines[0])).game == "connect_four"
    assert json.loads((tmp_path / "summary.json").read_text()) == result

    # a rerun resumes: nothing is played again
    played = []
    from stratagem.games import rollout

    monkeypatch.setattr(rollout, "collect_episodes", _counting(rollout.collect_episodes, played))
    again = await run_games_eval(cfg)
    assert again["resumed"] == 10 and sum(played) == 0 and again["models"] == result["models"]
    path = tmp_path / "base" / "connect_four-first.jsonl"
    text = path.read_text()
    path.write_text(text + '{"game": "connect_four", "se')  # a kill halfway through a third record
    cfg.episodes = 3
    third = await run_games_eval(cfg)
    assert third["resumed"] == 10 and sum(played) == 5  # one more game per matchup, the torn record cut first
    assert [Episode.from_dict(json.loads(x)).seed for x in path.read_text().splitlines()] == [0, 1, 2]
    (tmp_path / "base" / "leduc_poker-second.jsonl").write_text("")  # committed records gone: an error
    from stratagem.files import StoreDamage

    with pytest.raises(StoreDamage, match="leduc_poker-second.jsonl"):
        await run_games_eval(cfg)


async def test_before_model_plays_the_models_one_after_the_other(monkeypatch, tmp_path):
    """A server holding one policy at a time: each model's games all run after its switch, none before; a model
    whose games are all on record gets no switch on a rerun."""
    from stratagem.agents import make_agent
    from stratagem.games import rollout

    log = []
    monkeypatch.setattr(games_eval, "model_agent", lambda model, cfg: make_agent("random", seed=7))
    collect = rollout.collect_episodes

    async def logged(game, agents, *a, **kw):
        if kw["only"]:  # a matchup whose games are all on record is called with nothing to play
            log.append(("play", game))
        return await collect(game, agents, *a, **kw)
    monkeypatch.setattr(rollout, "collect_episodes", logged)
    cfg = GamesEvalConfig(models=["base", "iter-1"], games=["tictactoe", "kuhn_poker"], opponent="random",
                          episodes=1, out=str(tmp_path))
    result = await run_games_eval(cfg, before_model=lambda m: log.append(("switch", m)))
    switches = [i for i, e in enumerate(log) if e[0] == "switch"]
    assert [log[i][1] for i in switches] == ["base", "iter-1"]
    assert switches[0] == 0 and switches[1] == 5  # 2 games x 2 seat orders per model, in between
    assert set(result["models"]["iter-1"]) == {"tictactoe", "kuhn_poker"}
    log.clear()
    for f in ("kuhn_poker-second.jsonl", "kuhn_poker-second.jsonl.commit.json"):  # moved away: redo them
        (tmp_path / "iter-1" / f).unlink()
    await run_games_eval(cfg, before_model=lambda m: log.append(("switch", m)))
    assert log == [("switch", "iter-1"), ("play", "kuhn_poker")]


def test_line_progress_prints_every_twentieth_and_the_last():
    import io

    from stratagem.integrations.cli import LineProgress

    out = io.StringIO()
    with LineProgress(out) as p:
        t = p.add_task("strategic games", total=40)
        for _ in range(40):
            p.advance(t)
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and lines[0].startswith("strategic games: 2/40 (")
    assert lines[-1].startswith("strategic games: 40/40 (") and "left" not in lines[-1] and "left" in lines[0]


def test_run_adapters_and_the_merged_choice(tmp_path, monkeypatch):
    import torch
    import typer

    from stratagem.integrations.cli import merged_serving, run_adapters

    (tmp_path / "adapters" / "iter-2").mkdir(parents=True)
    (tmp_path / "adapters" / "iter-2" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapters" / "iter-3").mkdir()  # no adapter there: not picked
    names = ["base", "iter-2", "iter-3"]
    assert run_adapters(str(tmp_path), names, []) == [f"iter-2={tmp_path}/adapters/iter-2"]
    assert run_adapters(str(tmp_path), names, ["iter-2=/x"]) == ["iter-2=/x"]
    assert run_adapters(None, names, []) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert merged_serving("auto", None, {"iter-2": "p"}) and not merged_serving("auto", None, {})
    assert not merged_serving("lora", None, {"iter-2": "p"}) and not merged_serving("auto", "http://h/v1", {"a": "p"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not merged_serving("auto", None, {"iter-2": "p"}) and merged_serving("merged", None, {"iter-2": "p"})
    with pytest.raises(typer.BadParameter, match="cannot with --base-url"):
        merged_serving("merged", "http://h/v1", {})
    with pytest.raises(typer.BadParameter, match="auto, lora or merged"):
        merged_serving("fused", None, {})


def _counting(collect, played):
    async def wrapped(*a, only=None, **kw):
        played.append(len(only))
        return await collect(*a, only=only, **kw)
    return wrapped


def _cli(args):
    from typer.testing import CliRunner

    from stratagem.cli import app

    return CliRunner().invoke(app, ["eval", "games", "--base-url", "http://127.0.0.1:9/v1", *args])


def test_cli_eval_games_rejects_impossible_opponent_before_playing():
    r = _cli(["--games", "leduc_poker", "--opponent", "mcts:5"])
    assert r.exit_code == 1 and "MCTS needs perfect information" in r.output


def test_cli_eval_games_takes_the_runs_protocol_and_flags_override_it(monkeypatch, tmp_path):
    seen = {}

    async def fake(cfg, on_episode=None, before_model=None):
        seen["cfg"] = cfg
        return {"episodes": cfg.episodes, "models": {}}

    monkeypatch.setattr(games_eval, "run_games_eval", fake)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"sampling": {"temperature": 1.0, "max_tokens": 64},
                                                          "reply": {"open_answer": False}}))
    r = _cli(["--games", "tictactoe", "--run", str(tmp_path), "--max-tokens", "20", "--stop", ">", "--json"])
    assert r.exit_code == 0, r.output
    cfg = seen["cfg"]
    assert (cfg.sampling.temperature, cfg.sampling.max_tokens, cfg.sampling.stop) == (1.0, 20, [">"])
    assert (cfg.reply.open_answer, cfg.reply.response_prefix) == (False, "<answer>{legal_prefix}")
    assert cfg.games == ["tictactoe"]
    r = _cli(["--top-p", "1.5"])
    assert r.exit_code == 1 and "sampling.top_p" in r.output


@pytest.mark.vllm
def test_the_default_model_plays_tictactoe_mostly_legally_in_the_training_protocol(vllm_server, tmp_path):
    """Acceptance of the evaluation protocol: in the old protocol (no forced prefix) every reply was illegal."""
    from typer.testing import CliRunner

    from stratagem.cli import app

    r = CliRunner().invoke(app, ["eval", "games", "--models", "base", "--games", "tictactoe", "--opponent", "random",
                                 "--episodes", "10", "--base-url", vllm_server.base_url, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for label in ("first", "second"):
        s = result["models"]["base"]["tictactoe"][label]
        assert s["n"] == 10 and s["model_turns"] >= 10
        assert s["illegal_rate"] < 0.9, s
