"""`stratagem eval mystery`: MIRAGE's metrics per script and model with intervals over seeds, resumable; the games
are played by seeded random agents standing in for the served models (the protocol, not a model, is tested)."""

import json

import pytest
from typer.testing import CliRunner

import stratagem.games.mystery.rollout as rollout_mod
from stratagem.cli import app
from stratagem.games.mystery.conformance import FixedJudge, RandomPlayer
from stratagem.games.mystery.evaluate import summarise

runner = CliRunner()


@pytest.fixture
def fake_games(monkeypatch):
    played = []

    async def fake(script, n, *, base_url, player_model, judge_model, config, concurrency, seed, **kw):
        played.append((player_model, seed))
        return [await rollout_mod.play_episode(script, RandomPlayer(seed + len(player_model)), FixedJudge(), config,
                                               seed)]

    monkeypatch.setattr(rollout_mod, "collect_mystery_episodes", fake)
    return played


def test_leaderboard_and_resume(tmp_path, fake_games):
    args = ["eval", "mystery", "--models", "base,iter-1", "--scripts", "lighthouse,night_express", "--seeds", "2",
            "--rounds", "1", "--out", str(tmp_path), "--base-url", "http://127.0.0.1:9/v1", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert len(fake_games) == 8 and sorted(res["results"]) == ["base", "iter-1"]
    cell = res["results"]["base"]["scripts"]["lighthouse"]["victory"]
    assert cell["n"] == 2 and cell["lo"] <= cell["mean"] <= cell["hi"]
    assert (tmp_path / "base" / "lighthouse" / "seed-1.jsonl").exists()
    assert (tmp_path / "base" / "lighthouse" / "seed-1.md").exists()
    r2 = runner.invoke(app, args[:-1], env={"COLUMNS": "220"})  # resumed: nothing is played again; the table is printed
    assert r2.exit_code == 0 and len(fake_games) == 8
    assert "Overall" in r2.output and "Average" in r2.output and "iter-1" in r2.output


def test_average_is_over_seeds_of_the_script_mean():
    g = {("m", "a"): [{"victory": 1.0}, {"victory": 0.0}], ("m", "b"): [{"victory": 0.5}, {"victory": 0.5}]}
    for v in g.values():
        for d in v:
            d.update({k: 0.0 for k in ("tii", "cic", "ici", "sci", "overall", "failed_action_rate")})
    res = summarise(g, ["m"], ["a", "b"])
    avg = res["results"]["m"]["average"]["victory"]
    # per-seed means over scripts: (1 + .5) / 2 = .75 and (0 + .5) / 2 = .25 -> mean .5, t(0.975, 1) = 12.706,
    # sd = .3536, half = 12.706 * .3536 / sqrt(2) = 3.1766
    assert avg["mean"] == pytest.approx(0.5) and avg["hi"] - 0.5 == pytest.approx(3.1766, abs=1e-3)
