"""Rollouts that overlap the update (loop.async_rollout): which policy sampled each episode and how stale it was,
the store written in commit order (and after a kill, resumed), the importance ratio's denominator being the
behaviour adapter's log-prob, strict alternation when it is off, and the combinations refused."""

import asyncio
import os
import subprocess
import sys

import pytest
import torch
from training_fakes import FakeServer, fake_episode, make_fake_rollout

from stratagem.config import ConfigError
from stratagem.training.cli import train_config
from stratagem.training.distributed import Distributed
from stratagem.training.loop import BehaviourWeights, RunConfig, _open_run, run_training
from stratagem.training.objectives import Targets, get_loss
from stratagem.training.run_config import resumed
from stratagem.training.run_store import RunStore
from stratagem.training.samples import build_batch
from stratagem.training.trainer import LoRATrainer, TrainerConfig


def _cfg(tiny, iterations=3, n=4, **loop):
    return RunConfig.from_dict({"loop": {"algo": "mars", "iterations": iterations, "episodes_per_iteration": n,
                                         "model": tiny, **loop},
                                "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256,
                                            "dtype": "float32"}})


class EventServer(FakeServer):
    """A FakeServer that writes each install into a shared timeline."""

    def __init__(self, events):
        super().__init__()
        self.events = events

    def load_adapter(self, name, path, replace=False):
        self.events.append(("install", name))
        return super().load_adapter(name, path, replace)


def _timed_rollout(events, calls, run, delay=0.05):
    """The scripted rollout, its start and end in the timeline (named by the model it plays). Iteration k's games
    (k > 1) last until adapter iter-(k-1) is saved, and a little longer: a loop that installed iter-(k-1) without
    waiting for them would install it while they run."""
    inner = make_fake_rollout(calls, delay=delay)

    async def rollout(game, model, n, seed, on_episode):
        events.append(("start", model))
        k = seed // 10_000  # the loop's sampling seeds: seed * 1_000_000 + k * 10_000 + game * 1_000
        while k > 1 and not (run / "adapters" / f"iter-{k - 1}").is_dir():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2 if k > 1 else 0.0)
        out = await inner(game, model, n, seed, on_episode)
        events.append(("end", model))
        return out

    return rollout


def test_async_episodes_name_their_behaviour_policy_and_commit_in_order(tiny, tmp_path):
    events, calls = [], []
    store = run_training(_cfg(tiny, async_rollout=True), tmp_path / "run", server=EventServer(events),
                         rollout=_timed_rollout(events, calls, tmp_path / "run"), progress=False)
    # iteration 1 with base as today; iteration 2's games during update 1, still with base; iteration 3's during
    # update 2 with iter-1; none after the last update
    assert [c[1] for c in calls] == ["base", "base", "iter-1"]
    assert events == [("start", "base"), ("end", "base"),  # iteration 1, then update 1 beside iteration 2's games
                      ("start", "base"), ("end", "base"), ("install", "iter-1"),  # iter-1 only once they are done
                      ("start", "iter-1"), ("end", "iter-1"), ("install", "iter-2"),
                      ("install", "iter-3")]
    eps = list(store.episodes())
    assert len(eps) == 12 and [e.iteration for e in eps] == [1] * 4 + [2] * 4 + [3] * 4
    got = [(e.iteration, e.metrics["behaviour_policy"], e.metrics["staleness"]) for e in eps]
    assert got == [(1, "base", 0)] * 4 + [(2, "base", 1)] * 4 + [(3, "iter-1", 1)] * 4
    assert {t.adapter for e in eps if e.iteration == 3 for t in e.turns} == {"iter-1"}
    assert {s.agent for e in eps if e.iteration == 3 for s in e.seats} == {"llm:iter-1"}
    # the same games (seeds) as an alternating run: iteration k's seeds do not depend on when they were played
    assert [c[3] for c in calls] == [10_000, 20_000, 30_000]
    # every episode committed once, in its own iteration's part of the log, and the commits verified
    assert store.problems() == []
    assert RunStore(store.root).resume()["iteration"] == 3
    m = store.metrics()
    assert [x["staleness_mean"] for x in m] == [0.0, 1.0, 1.0]
    assert m[0]["stale_samples"] == 0 and m[1]["stale_samples"] > 0 and m[2]["stale_samples"] > 0
    # the loop waited for the games it installs after: they outlast the update here
    assert m[0]["rollout_wait_s"] >= 0.2 and m[0]["overlap_s"] > 0 and m[1]["rollout_wait_s"] >= 0.2
    assert m[2]["rollout_wait_s"] == m[2]["overlap_s"] == 0.0  # nothing played beside the last update
    # iteration 2's rollout time is the background one's: the part beside update 1 and the part waited for
    assert m[1]["rollout_s"] == pytest.approx(m[0]["overlap_s"] + m[0]["rollout_wait_s"], abs=0.05)


def test_alternating_when_async_is_off(tiny, tmp_path):
    events, calls = [], []
    store = run_training(_cfg(tiny, iterations=2), tmp_path / "run", server=EventServer(events),
                         rollout=_timed_rollout(events, calls, tmp_path / "run", delay=0.0), progress=False)
    assert events == [("start", "base"), ("end", "base"), ("install", "iter-1"),
                      ("start", "iter-1"), ("end", "iter-1"), ("install", "iter-2")]
    eps = list(store.episodes())
    assert [(e.metrics["behaviour_policy"], e.metrics["staleness"]) for e in eps] == \
        [("base", 0)] * 4 + [("iter-1", 0)] * 4
    m = store.metrics()
    assert [x["staleness_mean"] for x in m] == [0.0, 0.0] and all(x["stale_samples"] == 0 for x in m)
    assert "rollout_wait_s" not in m[0] and store.problems() == []


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from stratagem.training.loop import RunConfig, run_training
from training_fakes import FakeServer, make_fake_rollout
run_training(RunConfig.from_dict({cfg!r}), {out!r}, server=FakeServer(), rollout=make_fake_rollout([]),
             progress=False)
"""


def test_a_kill_loses_the_buffered_episodes_and_the_resume_replays_them(tiny, tmp_path):
    cfg = _cfg(tiny, async_rollout=True)
    out = tmp_path / "run"
    script = CHILD.format(tests=os.path.dirname(__file__), cfg=cfg.to_dict(), out=str(out))
    # killed just before iter-2 is installed: iteration 3's games are done, buffered in memory and not written
    child = subprocess.run([sys.executable, "-c", script], env={**os.environ, "STRATAGEM_FAILPOINT": "install:2"},
                           timeout=300)
    assert child.returncode == -9
    store = RunStore(out)
    assert store.completed_iterations() == 1
    assert sorted({e.iteration for e in store.episodes(committed_only=False)}) == [1, 2]

    calls = []
    run_training(_cfg(tiny, async_rollout=True), out, resume=True, server=FakeServer(),
                 rollout=make_fake_rollout(calls), progress=False)
    # iteration 2 played again, now and on-policy; iteration 3 beside its update, one version behind
    assert [c[1] for c in calls] == ["iter-1", "iter-1"]
    assert store.problems() == []
    eps = list(store.episodes())
    assert [(e.iteration, e.metrics["staleness"]) for e in eps] == [(1, 0)] * 4 + [(2, 0)] * 4 + [(3, 1)] * 4
    assert [m["staleness_mean"] for m in store.metrics()] == [0.0, 0.0, 1.0]


# ---- the ratio's denominator: the behaviour adapter's log-probs --------------------------------------------------

def _trainer(tiny):
    return LoRATrainer(tiny, TrainerConfig(dtype="float32", rank=4, alpha=8, micro_batch_tokens=64, minibatches=2),
                       seed=0)


def _move(trainer, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.lora_parameters().values():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_old_logprobs_of_stale_samples_are_the_behaviour_adapters(tiny):
    trainer = _trainer(tiny)
    _move(trainer, 1)
    a = trainer.lora_snapshot()  # weights A sampled the batch
    _move(trainer, 2)
    b = trainer.lora_snapshot()  # weights B train on it
    batch = build_batch([fake_episode("g", s, "iter-1") for s in range(3)], lambda i, j: True)
    samples = batch.samples
    assert {s.behaviour for s in samples} == {"iter-1"}
    groups = trainer.mini_batches(len(samples))
    assert len(groups) == 2
    with trainer.lora_weights(a):
        under_a = trainer.score(samples, groups=groups)
    under_b = trainer.score(samples, groups=groups)
    ppo = get_loss("ppo")(None)

    state = ppo.prepare(trainer, batch, Targets(advantages=[1.0] * len(batch.acts), behaviour={"iter-1": a}))
    # every sample's, the first mini-batch's too (its own forward would give B's), exactly A's
    assert all(torch.equal(o, lp.float().cpu()) for o, lp in zip(state["old"], under_a))
    assert not any(torch.allclose(o, lp.float().cpu()) for o, lp in zip(state["old"], under_b))
    assert state["stale"] == set(range(len(samples)))
    now = trainer.lora_parameters()
    assert all(torch.equal(now[n], b[n]) for n in b)  # B put back, bit for bit

    # without the behaviour weights the samples count as the current policy's: B's, the first group from its step
    fresh = ppo.prepare(trainer, batch, Targets(advantages=[1.0] * len(batch.acts)))
    assert [o is None for o in fresh["old"]] == [i in groups[0] for i in range(len(samples))]
    assert all(torch.equal(fresh["old"][i], under_b[i].float().cpu()) for i in groups[1])


def test_a_batch_of_stale_and_current_samples_scores_each_under_its_own_policy(tiny):
    trainer = _trainer(tiny)
    _move(trainer, 1)
    a = trainer.lora_snapshot()
    _move(trainer, 2)
    eps = [fake_episode("g", s, "iter-1" if s % 2 else "iter-2") for s in range(4)]
    batch = build_batch(eps, lambda i, j: True)
    groups = trainer.mini_batches(len(batch.samples))
    with trainer.lora_weights(a):
        under_a = trainer.score(batch.samples)
    under_b = trainer.score(batch.samples)
    state = get_loss("ppo")(None).prepare(trainer, batch, Targets(advantages=[0.5] * len(batch.acts),
                                                                  behaviour={"iter-1": a}))
    for i, s in enumerate(batch.samples):
        if s.behaviour == "iter-1":
            assert torch.allclose(state["old"][i], under_a[i], atol=1e-5)
        elif i in groups[0]:
            assert state["old"][i] is None  # the current policy's first step: taken from that step's forward
        else:
            assert torch.allclose(state["old"][i], under_b[i], atol=1e-5)
    # the update runs on it, and the first-step diagnostics leave the stale samples out
    st = trainer.update(batch, get_loss("ppo")(None), Targets(advantages=[0.5] * len(batch.acts),
                                                              behaviour={"iter-1": a}))
    assert st["first_step_abs_log_ratio"] == 0.0


def test_behaviour_weights_read_from_the_store_equal_the_kept_ones(tiny, tmp_path):
    trainer = _trainer(tiny)
    _move(trainer, 3)
    store = RunStore(tmp_path / "run")
    trainer.write_adapter(store.adapter_dir(2))
    kept = BehaviourWeights(trainer, store, 2, keep=1)
    assert set(kept.saved) == {2}
    del kept.saved[2]  # as after a resume that kept nothing: read from adapters/iter-2
    read = kept.weights("iter-2")
    want = trainer.lora_snapshot()
    assert set(read) == set(want) and all(torch.equal(read[n], want[n]) for n in want)
    base = kept.weights("base")  # not kept: no LoRA delta at all
    assert all(not p.any() for p in base.values())
    kept.record(3)
    kept.record(4)
    assert sorted(kept.saved) == [3, 4]  # the newest max_staleness + 1


# ---- refused combinations ----------------------------------------------------------------------------------------

def test_async_rollout_refuses_what_it_cannot_do(tiny, tmp_path):
    with pytest.raises(ConfigError, match="^loop.async_rollout: not with trainer.adapters per_role"):
        RunConfig.from_dict({"loop": {"async_rollout": True}, "trainer": {"adapters": "per_role"}})
    with pytest.raises(ConfigError, match="^loop.async_rollout: not with league play"):
        RunConfig.from_dict({"loop": {"async_rollout": True, "league": {"pool": 2}}})
    with pytest.raises(ConfigError, match="^loop.async_rollout: .*server.sleep_mode on"):
        RunConfig.from_dict({"loop": {"async_rollout": True}, "server": {"sleep_mode": "on"}})
    with pytest.raises(ConfigError, match="^loop.max_staleness: must be <= 1, got 2"):
        RunConfig.from_dict({"loop": {"async_rollout": True, "max_staleness": 2}})
    with pytest.raises(ConfigError, match="^loop.max_staleness: must be >= 1, got 0"):
        RunConfig.from_dict({"loop": {"max_staleness": 0}})
    for fine in ({"ppo": {"old_logprobs": "endpoint"}, "sampling": {"temperature": 1.0}},
                 {"ppo": {"old_logprobs": "trainer"}}, {"loop": {"async_rollout": True, "policy_weights": "lora"}}):
        RunConfig.from_dict({"loop": {"async_rollout": True}, **fine})
    assert not RunConfig().loop.async_rollout  # off by default
    # several trainer processes: refused when the run opens, before anything is written
    with pytest.raises(ConfigError, match="^loop.async_rollout: not supported with several trainer processes"):
        _open_run(_cfg(tiny, async_rollout=True), tmp_path / "run", False, None, Distributed(world_size=2))
    assert not (tmp_path / "run").exists()


def test_a_resume_may_turn_it_on_or_off_and_is_checked_again(tmp_path):
    for name, trainer in (("shared", {}), ("per_role", {"adapters": "per_role"})):
        RunStore(tmp_path / name).create(RunConfig.from_dict({"loop": {"seed": 9}, "trainer": trainer}).to_dict())
    cfg, _, resume, _ = train_config(["--out", str(tmp_path / "shared"), "--resume", "--loop.async-rollout"])
    assert resume and cfg.loop.async_rollout is True and cfg.loop.seed == 9
    with pytest.raises(ConfigError, match="^loop.async_rollout: not with trainer.adapters per_role"):
        train_config(["--out", str(tmp_path / "per_role"), "--resume", "--loop.async-rollout"])
    # run_training's own resume: the given config's RESUMABLE fields over the saved one, checked again
    saved = RunStore(tmp_path / "per_role").read_config()
    given = RunConfig.from_dict({"loop": {"async_rollout": True}})
    with pytest.raises(ConfigError, match="^loop.async_rollout: not with trainer.adapters per_role"):
        resumed(RunConfig.from_dict(saved), given)
    on = resumed(RunConfig.from_dict(RunStore(tmp_path / "shared").read_config()), given)
    assert on.loop.async_rollout is True and on.loop.seed == 9
    off = resumed(RunConfig.from_dict(on.to_dict()), RunConfig())
    assert off.loop.async_rollout is False


def test_server_cpus_pins_the_server_with_taskset():
    import shutil

    from stratagem.integrations.vllm_server import ServerConfig, ServerError, VLLMServer

    assert VLLMServer(ServerConfig())._pin() == []  # not pinned by default
    if shutil.which("taskset"):
        assert VLLMServer(ServerConfig(cpus="0-1,3"))._pin() == [shutil.which("taskset"), "-c", "0-1,3"]
    with pytest.raises(ServerError, match="cpus: a CPU list such as '0' or '0-3,8', got 'core0'"):
        VLLMServer(ServerConfig(cpus="core0"))._pin()
    assert RunConfig.from_dict({"server": {"cpus": "0"}}).server.cpus == "0"
