"""`stratagem export`: a run's trained turns as a Hugging Face dataset, read back with datasets.load_from_disk; the
recomputed advantages are the ones the loop trained with (their per-iteration mean is the metrics' adv_mean)."""

import pytest
from training_fakes import FakeServer, make_fake_rollout

from stratagem.training.loop import RunConfig, run_training

datasets = pytest.importorskip("datasets")


def _run(tiny, out, algo):
    cfg = RunConfig.from_dict({"loop": {"algo": algo, "iterations": 2, "episodes_per_iteration": 4, "model": tiny,
                                        "games": ["tictactoe"]},
                               "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256}})
    return run_training(cfg, out, server=FakeServer(), rollout=make_fake_rollout([]), progress=False)


@pytest.mark.parametrize("algo", ["rae", "maro"])
def test_export_writes_one_row_per_trained_turn(tiny, tmp_path, algo):
    from typer.testing import CliRunner

    from stratagem.cli import app

    store = _run(tiny, tmp_path / "run", algo)
    r = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--to", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    metrics = store.metrics()
    assert len(ds) == sum(m["trained_acts"] for m in metrics)
    assert set(ds["run_iteration"]) == {1, 2} and set(ds["adapter"]) == {"base", "iter-1"}
    row = ds[0]
    assert row["game"] == "tictactoe" and row["completion_token_ids"] and row["role"] in ("x", "o")
    for k, m in enumerate(metrics, start=1):
        part = ds.filter(lambda x, k=k: x["run_iteration"] == k)
        if algo == "maro":
            assert all(d is not None for d in part["desirable"]) and all(a is None for a in part["advantage"])
            assert sum(part["desirable"]) == m["desirable_acts"]
        else:  # RAE carries its baselines over iterations: iteration 2's advantages need iteration 1's state
            assert sum(part["advantage"]) / len(part) == pytest.approx(m["adv_mean"], abs=1e-9)


def test_export_refuses_a_directory_that_is_not_a_run(tmp_path):
    from typer.testing import CliRunner

    from stratagem.cli import app

    r = CliRunner().invoke(app, ["export", str(tmp_path), "--to", str(tmp_path / "ds")])
    assert r.exit_code == 1 and "not a run directory" in r.output
