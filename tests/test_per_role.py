"""Per-role adapters (trainer.adapters per_role) in the loop: which adapter each seat samples, what is installed and
verified on the server, what a resume loads, and the configs refused. The trainer's own mechanism (a role's adapter
changes only from its role's turns) is in test_training_trainer.py; the real server in test_training_vllm.py."""

import asyncio
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from training_fakes import FakeServer, fake_episode

from stratagem.agents import make_agent
from stratagem.games import rollout as game_rollout
from stratagem.games.registry import role_model
from stratagem.games.rollout import rollout_strategic
from stratagem.training.loop import RunConfig, rollout_job, run_training
from stratagem.training.run_config import run_roles


def _cfg(tiny, iterations=2, **trainer):
    return RunConfig.from_dict({"loop": {"iterations": iterations, "episodes_per_iteration": 4, "model": tiny,
                                         "games": ["tictactoe"]},
                                "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256,
                                            "adapters": "per_role", **trainer}})


def test_each_seat_samples_its_roles_adapter(monkeypatch):
    cfg = RunConfig.from_dict({"loop": {"games": ["tictactoe", "kuhn_poker", "mystery"]},
                               "trainer": {"adapters": "per_role"}})
    assert run_roles(cfg) == ["X", "O", "player_0", "player_1", "culprit", "civilian"]
    job = rollout_job(cfg, "tictactoe", "iter-1", 2, 0, "http://127.0.0.1:9/v1")
    assert job.role_policies == {"X": "iter-1-X", "O": "iter-1-O"}
    assert rollout_job(cfg, "kuhn_poker", "base", 2, 0, "u").role_policies == {"player_0": "base", "player_1": "base"}
    assert rollout_job(cfg, "mystery", "iter-2", 2, 0, "u").role_policies == \
        {"culprit": "iter-2-culprit", "civilian": "iter-2-civilian"}
    shared = RunConfig.from_dict({"loop": {"games": ["tictactoe"]}})
    assert rollout_job(shared, "tictactoe", "iter-1", 2, 0, "u").role_policies == {}

    # the rollout seats one agent per role, in seat order: the served names reach make_agent (played here by
    # random bots standing in for the server's models)
    specs = []

    def recording(spec, **kw):
        specs.append(spec)
        return make_agent("random", seed=kw.get("seed", 0), game=kw.get("game"))

    monkeypatch.setattr(game_rollout, "make_agent", recording)
    eps = asyncio.run(rollout_strategic(dataclasses.replace(job, n=2)))
    assert specs == ["llm:iter-1-X", "llm:iter-1-O"] and len(eps) == 2
    specs.clear()
    asyncio.run(rollout_strategic(dataclasses.replace(job, n=1, role_policies={})))
    assert specs == ["llm:iter-1"]  # one shared adapter: one agent in both seats


def _role_rollout(calls):
    """The fake rollout, with tic-tac-toe's role names, each turn sampled by its role's adapter."""
    async def rollout(game, model, n, seed, on_episode):
        calls.append(model)
        out = []
        for i in range(n):
            ep = fake_episode(game, seed + i, model)
            for s in ep.seats:
                s.role = s.role.upper()
            for t in ep.turns:
                t.role = t.role.upper()
                t.adapter = role_model(model, t.role)
            on_episode(ep)
            out.append(ep)
        return out
    return rollout


def test_the_loop_installs_verifies_and_resumes_every_roles_adapter(tiny, tmp_path):
    server, calls = FakeServer(), []
    store = run_training(_cfg(tiny, iterations=1), tmp_path / "run", server=server, rollout=_role_rollout(calls),
                         progress=False)
    assert [n for n, _ in server.loaded] == ["iter-1-X", "iter-1-O"] and server.verified == ["iter-1-X", "iter-1-O"]
    assert [p for _, p in server.loaded] == [str(store.adapter_dir(1) / r) for r in ("X", "O")]
    m = store.metrics()[0]
    assert {"verify/X/max_abs_diff", "verify/O/max_abs_diff", "verify/max_abs_diff"} <= set(m)
    first = {r: load_file(str(store.adapter_dir(1) / r / "adapter_model.safetensors")) for r in ("X", "O")}
    assert first["X"].keys() == first["O"].keys() and len(first["X"]) == 2 * 4 * 2
    assert any(not torch.equal(first["X"][k], first["O"][k]) for k in first["X"])  # two adapters, not one copy

    # a resume loads both adapters and both optimizer states, and rolls out with iter-1
    run_training(_cfg(tiny, iterations=2), tmp_path / "run", resume=True, server=server,
                 rollout=_role_rollout(calls), progress=False)
    assert calls == ["base", "iter-1"]
    assert [n for n, _ in server.loaded] == ["iter-1-X", "iter-1-O", "iter-1-X", "iter-1-O", "iter-2-X", "iter-2-O"]
    second = {r: load_file(str(store.adapter_dir(2) / r / "adapter_model.safetensors")) for r in ("X", "O")}
    for r in ("X", "O"):
        assert all(not torch.equal(first[r][k], second[r][k]) for k in first[r]), r  # each trained on from iter-1
    state = torch.load(store.adapter_dir(2) / "trainer_state.pt", weights_only=False)
    assert set(state["trainer"]["optimizers"]) == {"role_X", "role_O"}


def test_per_role_configs_that_cannot_work_are_refused(tiny):
    with pytest.raises(ValueError, match="loop.opponents and loop.league"):
        RunConfig.from_dict({"loop": {"games": ["tictactoe"], "opponents": ["random"]},
                             "trainer": {"adapters": "per_role"}})
    with pytest.raises(ValueError, match="per-role adapters|each role has its own adapter"):
        RunConfig.from_dict({"loop": {"games": ["tictactoe"], "policy_weights": "merged"},
                             "trainer": {"adapters": "per_role"}})
    with pytest.raises(ValueError, match="connect_four seat roles that no per-role adapter"):
        RunConfig.from_dict({"loop": {"games": ["kuhn_poker"], "eval_games": ["connect_four"], "eval_episodes": 2},
                             "trainer": {"adapters": "per_role"}})
    with pytest.raises(ValueError, match="choices|must be one of"):
        RunConfig.from_dict({"trainer": {"adapters": "per_seat"}})
    # the same roles in two games share their adapter: Kuhn's and Leduc's player_0 is one role
    cfg = RunConfig.from_dict({"loop": {"games": ["kuhn_poker", "leduc_poker"], "eval_games": ["leduc_poker"]},
                               "trainer": {"adapters": "per_role"}})
    assert run_roles(cfg) == ["player_0", "player_1"]


def test_the_mystery_seats_each_faction_with_its_adapter(monkeypatch):
    """collect_mystery_episodes with faction_models: a culprit character samples the culprit's adapter, a civilian
    the civilian's, and under the mirage protocol each side's judging is its own adapter's."""
    import importlib

    mr = importlib.import_module("stratagem.games.mystery.rollout")  # the package's `rollout` is a function
    from stratagem.games.mystery.game import MysteryConfig
    from stratagem.games.mystery.library import load_script

    made, seen = [], {}

    def agent(base_url, model, *a, **kw):
        made.append(model)
        return type("Agent", (), {"model": model})()

    async def collect(game, seats, n, concurrency, **kw):
        seen.update(seats=[s.model for s in seats], referees={k: v.model for k, v in kw["referees"].items()})
        return []

    async def no_summaries(*a, **kw):
        return None

    monkeypatch.setattr(mr, "make_llm_agent", agent)
    monkeypatch.setattr(mr, "collect_episodes", collect)
    monkeypatch.setattr(mr, "script_summaries", no_summaries)
    script = load_script("lighthouse")
    models = {"culprit": "iter-2-culprit", "civilian": "iter-2-civilian"}
    asyncio.run(mr.collect_mystery_episodes("lighthouse", 1, base_url="u", config=MysteryConfig.mirage(),
                                            faction_models=models))
    assert seen["seats"] == [models["culprit" if c in script.culprits else "civilian"] for c in script.characters]
    assert {"iter-2-culprit", "iter-2-civilian"} <= set(seen["seats"])
    assert seen["referees"]["culprit"] == "iter-2-culprit" and seen["referees"]["civilian"] == "iter-2-civilian"
    with pytest.raises(ValueError, match="one model for each of culprit, civilian"):
        asyncio.run(mr.collect_mystery_episodes("lighthouse", 1, base_url="u", faction_models={"culprit": "a"}))
