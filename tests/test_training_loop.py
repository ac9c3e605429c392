"""The training loop with a scripted rollout, a stand-in server and a tiny random-weight model: iteration order,
adapters and their hot-loading, metrics, crash retry, and a real kill -9 followed by --resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from training_fakes import FakeServer, fake_episode, make_fake_rollout

from stratagem.training.loop import RunConfig, episode_metrics, episodes_per_game, run_training
from stratagem.training.run_store import RunStore
from stratagem.training.trainer import LoRATrainer


def _cfg(tiny, algo="mars", iterations=2, n=4, games=("tictactoe",)):
    return RunConfig.from_dict({"loop": {"algo": algo, "iterations": iterations, "episodes_per_iteration": n,
                                         "model": tiny, "games": list(games)},
                                "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256}})


def test_config_errors_name_the_input():
    with pytest.raises(ValueError, match="^loop.episodes: unknown field of LoopConfig"):
        RunConfig.from_dict({"loop": {"episodes": 3}})
    with pytest.raises(ValueError, match="^lora: unknown field of RunConfig"):
        RunConfig.from_dict({"lora": {}})
    with pytest.raises(ValueError, match="^loop.algo: must be one of grpo, mars, marshal, rae, maro, got 'ppo'"):
        RunConfig.from_dict({"loop": {"algo": "ppo"}})
    cfg = RunConfig.from_dict({"loop": {"games": ["tictactoe", "kuhn_poker", "mini_hanabi"],
                                        "episodes_per_iteration": 8}})
    assert episodes_per_game(cfg.loop) == {"tictactoe": 3, "kuhn_poker": 3, "mini_hanabi": 2}


def test_episode_metrics():
    ep = fake_episode("g", 3, "base")
    m = episode_metrics([ep, fake_episode("g", 4, "base")])
    assert set(m) == {"return/g/x", "return/g/o", "win_rate/g/x", "win_rate/g/o", "illegal_rate/g"}
    assert m["win_rate/g/x"] + m["win_rate/g/o"] == pytest.approx(1.0)


def _lora(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_two_iterations_train_every_parameter_and_hot_load(tiny, tmp_path):
    calls, server = [], FakeServer()
    store = run_training(_cfg(tiny), tmp_path / "run", server=server, rollout=make_fake_rollout(calls),
                         progress=False)
    assert [c[1] for c in calls] == ["base", "iter-1"]  # iteration k rolls out with the adapter of k - 1
    assert [n for n, _ in server.loaded] == ["iter-1", "iter-2"] and server.verified == ["iter-1", "iter-2"]
    assert store.completed_iterations() == 2 and len(list(store.episodes())) == 8
    init = LoRATrainer(tiny, _cfg(tiny).trainer, seed=0).lora_parameters()
    final = _lora(store.adapter_dir(2))
    assert len(final) == len(init) == 2 * 4 * 2
    unchanged = [n for n, p in init.items()
                 if torch.equal(p.detach(), final[n.replace(".default", "")])]
    assert unchanged == []
    metrics = store.metrics()
    assert [m["iteration"] for m in metrics] == [1, 2]
    for key in ("loss", "kl", "adv_mean", "adv_std", "tokens_per_s", "return/tictactoe/x", "illegal_rate/tictactoe"):
        assert key in metrics[0]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tb").iterdir())
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(_cfg(tiny), tmp_path / "run", server=server, rollout=make_fake_rollout([]), progress=False)


def test_merged_policy_is_reloaded_in_place_and_recorded_under_its_version(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto means merged when serving on a CPU
    calls, server = [], FakeServer(weight_reload=True)
    store = run_training(_cfg(tiny), tmp_path / "run", server=server, rollout=make_fake_rollout(calls),
                         progress=False)
    assert [c[1] for c in calls] == ["base", "base"]  # the merged policy is served as `base`
    assert server.policy_loads == ["iter-1", "iter-2"] and server.loaded == []
    assert {t.adapter for e in store.episodes() if e.iteration == 2 for t in e.turns} == {"iter-1"}
    assert {s.agent for e in store.episodes() if e.iteration == 2 for s in e.seats} == {"llm:iter-1"}
    assert "verify/max_abs_diff" in store.metrics()[1]
    # a server that cannot reload its weights falls back to LoRA under auto, and refuses an explicit merged
    cfg = _cfg(tiny, iterations=1)
    run_training(cfg, tmp_path / "lora", server=(plain := FakeServer()), rollout=make_fake_rollout([]),
                 progress=False)
    assert [n for n, _ in plain.loaded] == ["iter-1"] and plain.policy_loads == []
    cfg.loop.policy_weights = "merged"
    with pytest.raises(ValueError, match="cannot reload its weights"):
        run_training(cfg, tmp_path / "refused", server=FakeServer(), rollout=make_fake_rollout([]), progress=False)
    with pytest.raises(ValueError, match="judge is the base model"):
        RunConfig.from_dict({"loop": {"games": ["mystery"], "policy_weights": "merged"}})


def test_report_writes_plots(tiny, tmp_path):
    from stratagem.training.report import write_report

    store = run_training(_cfg(tiny, algo="grpo", iterations=2, n=2), tmp_path / "run", server=FakeServer(),
                         rollout=make_fake_rollout([]), progress=False)
    paths = write_report(store.root)
    assert paths and all(p.suffix == ".png" and p.stat().st_size > 0 for p in paths)
    assert all(p.parent == store.root / "plots" for p in paths)


def test_maro_and_rae_iterations(tiny, tmp_path):
    for algo in ("maro", "rae"):
        store = run_training(_cfg(tiny, algo=algo, iterations=1, n=4), tmp_path / algo, server=FakeServer(),
                             rollout=make_fake_rollout([]), progress=False)
        m = store.metrics()[0]
        assert m["trained_acts"] > 0
        if algo == "maro":  # the trainer got exactly the act-balanced labels of the iteration's episodes
            import random

            from stratagem.training.losses import MAROConfig, maro_labels

            labels = maro_labels(list(store.episodes()), lambda ep, s: True, MAROConfig(), random.Random(1))  # seed 0, iteration 1
            assert (m["desirable_acts"], m["undesirable_acts"]) == (sum(labels.values()),
                                                                    len(labels) - sum(labels.values()))
            assert m["desirable_acts"] > 0 and m["undesirable_acts"] > 0
            # two seats into two mini-batches: dealt plainly, each would hold one role and z0 no pair
            assert m["z0_pairs"] >= 1
        else:
            state = store.load_state(1)["loop"]["advantage_state"]
            assert set(state["rae_baseline"]) == {"tictactoe|x", "tictactoe|o"}


def test_maro_iteration_with_one_labelled_episode_skips_its_update(tiny, tmp_path):
    # every game but the first a draw: the labels sit in one episode, z0 has no pair; the iteration is kept, its
    # update skipped and counted, and nothing is lost
    inner = make_fake_rollout([])

    async def draws(game, model, n, seed, on_episode):
        eps = await inner(game, model, n, seed, lambda ep: None)
        for ep in eps[1:]:
            ep.winners = []
        for ep in eps:
            on_episode(ep)
        return eps

    store = run_training(_cfg(tiny, algo="maro", iterations=1, n=3), tmp_path / "run", server=FakeServer(),
                         rollout=draws, progress=False)
    m = store.metrics()[0]
    assert m["skipped_update"] == 1.0 and m["trained_tokens"] == 0.0 and m["trained_acts"] == 0.0
    assert len(list(store.episodes())) == 3


def test_server_crash_is_retried_without_double_counting(tiny, tmp_path):
    calls, server = [], FakeServer()
    store = run_training(_cfg(tiny, iterations=1), tmp_path / "run", server=server,
                         rollout=make_fake_rollout(calls, fail_first=1, server=server), progress=False)
    assert server.restarts == 1 and len(calls) == 2 and calls[0] == calls[1]
    eps = list(store.episodes())
    assert len(eps) == 4 and [e.seed for e in eps] == [calls[0][3] + i for i in range(4)]


def test_attached_server_crash_is_a_clear_error(tiny, tmp_path):
    server = FakeServer()
    server.owned = False
    with pytest.raises(RuntimeError, match="did not start it; restart it and pass --resume"):
        run_training(_cfg(tiny, iterations=1), tmp_path / "run", server=server,
                     rollout=make_fake_rollout([], fail_first=1, server=server), progress=False)


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from stratagem.training.loop import RunConfig, run_training
from training_fakes import FakeServer, make_fake_rollout
cfg = RunConfig.from_dict({cfg!r})
run_training(cfg, {out!r}, server=FakeServer(), rollout=make_fake_rollout([], delay=0.4), progress=False)
"""


def test_kill_9_mid_iteration_then_resume_matches_uninterrupted(tiny, tmp_path):
    cfg = _cfg(tiny, iterations=3)
    ref = run_training(cfg, tmp_path / "ref", server=FakeServer(), rollout=make_fake_rollout([]), progress=False)

    out = tmp_path / "killed"
    script = CHILD.format(tests=os.path.dirname(__file__), cfg=cfg.to_dict(), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", script])
    store = RunStore(out)
    deadline = time.monotonic() + 120
    # wait until iteration 2 is under way: iteration 1 committed and uncommitted episodes appended after it
    while time.monotonic() < deadline:
        if store.checkpoint_path.exists() and store.completed_iterations() == 1 \
                and store.episodes_path.stat().st_size > store.checkpoint()["episodes_bytes"]:
            break
        assert child.poll() is None, "the child run ended before it could be killed"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert store.completed_iterations() == 1
    assert len(list(store.episodes(committed_only=False))) > 4

    calls = []
    run_training(_cfg(tiny, iterations=3), out, resume=True, server=FakeServer(), rollout=make_fake_rollout(calls),
                 progress=False)
    assert [c[1] for c in calls] == ["iter-1", "iter-2"]
    got, want = list(store.episodes()), list(ref.episodes())
    assert len(got) == len(want) == 12
    assert [(e.seed, e.iteration) for e in got] == [(e.seed, e.iteration) for e in want]
    commits = [json.loads(x) for x in store.episodes_path.read_text().splitlines() if '"commit"' in x]
    assert [c["commit"] for c in commits] == [1, 2, 3]
    # same adapter, optimizer and RNG state: the resumed run ends bit-identical to the uninterrupted one
    a, b = _lora(store.adapter_dir(3)), _lora(ref.adapter_dir(3))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert [m["iteration"] for m in store.metrics()] == [1, 2, 3]
