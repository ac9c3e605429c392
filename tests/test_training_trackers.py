"""Experiment trackers beside TensorBoard: unknown or missing trackers refused before a run starts; a registered
tracker receives the config once and every iteration's numbers, and a resume continues the same tracker run."""

import pytest
from training_fakes import FakeServer, make_fake_rollout, tiny_model

from stratagem.config import ConfigError
from stratagem.training import trackers
from stratagem.training.loop import RunConfig, run_training


def test_unknown_and_uninstalled_trackers_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="loop.trackers: unknown tracker 'neptune'"):
        RunConfig.from_dict({"loop": {"trackers": ["neptune"]}}).validate()
    monkeypatch.setitem(trackers.TRACKERS, "absent", ("no_such_package_here", None))
    with pytest.raises(ConfigError, match="needs the no_such_package_here package.*pip install"):
        RunConfig.from_dict({"loop": {"trackers": ["absent"]}}).validate()


def test_flat_config():
    assert trackers.flat({"trainer": {"lr": 1e-4, "targets": ["q", "v"]}, "seed": 0}) == {
        "trainer.lr": 1e-4, "trainer.targets": '["q", "v"]', "seed": 0}


def test_a_tracker_gets_every_iteration_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    opened, logged = [], []

    def factory(run_dir, config, run_id):
        opened.append((run_dir.name, config["loop"]["iterations"], run_id))

        class T:
            def log(self, metrics, step):
                logged.append((step, metrics))

            def close(self):
                logged.append("closed")
        return T(), run_id or "run-17"

    monkeypatch.setitem(trackers.TRACKERS, "memory", ("json", factory))  # json: a package that is installed
    tiny = str(tiny_model(tmp_path / "model"))

    def cfg(iterations):
        return RunConfig.from_dict({"loop": {"iterations": iterations, "episodes_per_iteration": 2, "model": tiny,
                                             "games": ["tictactoe"], "trackers": ["memory"]},
                                    "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256}})
    store = run_training(cfg(1), tmp_path / "run", server=FakeServer(), rollout=make_fake_rollout([]),
                         progress=False)
    assert opened == [("run", 1, None)] and logged[-1] == "closed"
    step, metrics = logged[0]
    assert step == 1 and metrics["loss"] == store.metrics()[0]["loss"] and "iteration" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    logged.clear()
    run_training(cfg(2), tmp_path / "run", resume=True, server=FakeServer(), rollout=make_fake_rollout([]),
                 progress=False)
    assert opened[1] == ("run", 2, "run-17")  # the saved config with the resume's extension; the same tracker run
    assert [e[0] for e in logged[:-1]] == [2] and logged[-1] == "closed"
