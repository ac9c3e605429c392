"""The run store's commit-and-verify rule: damage to committed data stops a resume with a clear error and writes
nothing, `--resume-from K` rolls back to an intact commit, an uncommitted tail is still cut, a file is never
extended; and crash consistency under 20 seeded SIGKILLs (benchmarks/crash_consistency.py)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from training_fakes import FakeServer, make_fake_rollout

from stratagem.files import AppendLog, Journal, StoreDamage, cut_to
from stratagem.training.loop import RunConfig, run_training
from stratagem.training.run_store import RunStore

ROOT = Path(__file__).resolve().parent.parent


def _cfg(tiny, iterations=3):
    return RunConfig.from_dict({"loop": {"algo": "mars", "iterations": iterations, "episodes_per_iteration": 4,
                                         "model": tiny},
                                "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256}})


def _train(tiny, out, iterations=3, **kw):
    return run_training(_cfg(tiny, iterations), out, server=FakeServer(), rollout=make_fake_rollout([]),
                        progress=False, **kw)


@pytest.fixture(scope="module")
def run3(tiny, tmp_path_factory):
    """A committed 3-iteration run, copied fresh by each test that damages it."""
    return _train(tiny, tmp_path_factory.mktemp("run3") / "run").root


@pytest.fixture
def run(run3, tmp_path):
    import shutil

    shutil.copytree(run3, tmp_path / "run")
    return tmp_path / "run"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _resume_fails(tiny, run, match, resume_from=None):
    before = _tree(run)
    with pytest.raises(StoreDamage, match=match) as e:
        run_training(_cfg(tiny, 4), run, resume=True, resume_from=resume_from, server=FakeServer(),
                     rollout=make_fake_rollout([]), progress=False)
    assert _tree(run) == before, "a refused resume must write nothing"
    assert "Nothing was written" in str(e.value)
    return str(e.value)


def test_each_commit_records_checksums_of_what_it_committed(run):
    cp = json.loads((run / "checkpoint.json").read_text())
    assert [c["iteration"] for c in cp["commits"]] == [1, 2, 3] and cp["iteration"] == 3
    last = cp["commits"][-1]
    data = (run / "episodes.jsonl").read_bytes()
    assert last["episodes_log"] == {"bytes": len(data), "lines": data.count(b"\n"),
                                    "sha256": hashlib.sha256(data).hexdigest()}
    first = cp["commits"][0]["episodes_log"]
    assert hashlib.sha256(data[: first["bytes"]]).hexdigest() == first["sha256"]
    assert set(last["adapter"]) >= {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt"}
    st = (run / "adapters" / "iter-3" / "adapter_model.safetensors").read_bytes()
    assert last["adapter"]["adapter_model.safetensors"] == {"bytes": len(st), "sha256": hashlib.sha256(st).hexdigest()}
    assert cp["config_sha256"] == hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    assert cp["trainer_dtype"] in ("float32", "bfloat16")
    assert [m["trainer_dtype"] for m in RunStore(run).metrics()] == [cp["trainer_dtype"]] * 3


def test_torn_committed_episodes_is_refused_then_resume_from_rolls_back(tiny, run):
    """The reliability issue's scenario: 300 bytes cut off the committed episodes file."""
    path = run / "episodes.jsonl"
    size = path.stat().st_size
    cut_to(path, size - 300)
    msg = _resume_fails(tiny, run, "episodes.jsonl")
    assert f"expected at least {size} committed bytes, found {size - 300}" in msg
    assert "--resume-from 2" in msg and "iteration 3 is dropped" in msg
    assert path.stat().st_size == size - 300  # not padded back with NUL bytes

    calls = []
    store = run_training(_cfg(tiny, 4), run, resume=True, resume_from=2, server=FakeServer(),
                         rollout=make_fake_rollout(calls), progress=False)
    assert [c[1] for c in calls] == ["iter-2", "iter-3"]  # iterations 3 and 4 played again
    store.verify()
    assert b"\0" not in path.read_bytes()
    eps = list(store.episodes())
    assert len(eps) == 16 and len({(e.iteration, e.seed) for e in eps}) == 16
    assert [m["iteration"] for m in store.metrics()] == [1, 2, 3, 4]


def test_a_changed_committed_byte_is_found(tiny, run):
    path = run / "episodes.jsonl"
    data = bytearray(path.read_bytes())
    i = data.index(b'"seed"')
    data[i + 1] = ord("S")  # same length, other bytes
    path.write_bytes(bytes(data))
    msg = _resume_fails(tiny, run, "changed after the commit")
    assert "--resume-from 0" in msg  # the damage is in iteration 1's episodes


def test_missing_adapter_file_is_refused(tiny, run):
    (run / "adapters" / "iter-2" / "adapter_model.safetensors").unlink()
    msg = _resume_fails(tiny, run, r"iter-2/adapter_model.safetensors: missing")
    assert "--resume-from 1" in msg


def test_edited_config_is_refused(tiny, run):
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("lr: 0.01", "lr: 0.02"))
    _resume_fails(tiny, run, "config.yaml: changed after the run was created")


def test_checkpoint_newer_than_the_data_is_refused(tiny, run):
    """The logs restored from a copy taken after iteration 2, beside the checkpoint of iteration 3."""
    cp = RunStore(run).checkpoint()
    two = cp["commits"][1]
    cut_to(run / "episodes.jsonl", two["episodes_log"]["bytes"])
    cut_to(run / "metrics.jsonl", two["metrics_log"]["bytes"])
    msg = _resume_fails(tiny, run, "expected at least")
    assert "--resume-from 2" in msg


def test_damaged_metrics_and_checkpoint_are_refused(tiny, run, tmp_path):
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().replace('"iteration": 2', '"iteration": 9'))
    _resume_fails(tiny, run, "metrics.jsonl")
    (run / "checkpoint.json").write_text('{"iteration": 3, "commi')
    _resume_fails(tiny, run, "checkpoint.json: not valid JSON")


def test_resume_from_an_unknown_iteration_is_an_error(tiny, run):
    with pytest.raises(ValueError, match="--resume-from 7"):
        RunStore(run).resume(7)


def test_uncommitted_tail_is_cut_and_the_file_never_extended(tiny, run):
    path = run / "episodes.jsonl"
    committed = path.read_bytes()
    path.write_bytes(committed + b'{"game": "tictactoe", "se')  # a torn write of the next iteration
    RunStore(run).resume()
    assert path.read_bytes() == committed
    with pytest.raises(StoreDamage, match="cannot cut to"):
        cut_to(path, len(committed) + 10)
    assert path.read_bytes() == committed


def test_run_written_before_checksums_resumes_with_length_checks(tiny, run):
    """A format-1 checkpoint (lengths only) is adopted; a file shorter than its lengths is still refused."""
    cp = RunStore(run).checkpoint()
    last = cp["commits"][-1]
    (run / "checkpoint.json").write_text(json.dumps({"iteration": 3, "episodes": last["episodes"],
                                                     "episodes_bytes": last["episodes_log"]["bytes"],
                                                     "metrics_lines": 3}))
    store = RunStore(run)
    assert store.resume()["iteration"] == 3
    store.commit(4, 0, {"iteration": 4})
    assert RunStore(run).checkpoint()["commits"][-1]["episodes_log"]["sha256"] is not None
    cut_to(run / "episodes.jsonl", 100)
    with pytest.raises(StoreDamage, match="expected at least"):
        RunStore(run).resume()


def test_writing_before_create_or_resume_is_an_error(run):
    with pytest.raises(RuntimeError, match="create\\(\\) or resume\\(\\)"):
        RunStore(run).commit(4, 0, {})


# ---- the journal the eval writers use --------------------------------------------------------------------------

def test_journal_commits_each_record_and_cuts_a_torn_tail(tmp_path):
    path = tmp_path / "results.jsonl"
    j = Journal(path)
    j.append(json.dumps({"id": "a"}))
    j.append(json.dumps({"id": "b"}))
    with open(path, "ab") as f:
        f.write(b'{"id": "c", "pred')  # a kill halfway through the third record
    again = Journal(path)
    assert [r["id"] for r in again.records()] == ["a", "b"]
    again.append(json.dumps({"id": "c"}))  # not glued onto the torn line
    assert [r["id"] for r in Journal(path).records()] == ["a", "b", "c"]
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_journal_finds_lost_or_changed_records(tmp_path):
    path = tmp_path / "results.jsonl"
    j = Journal(path)
    for i in range(3):
        j.append(json.dumps({"id": i}))
    cut_to(path, path.stat().st_size - 10)
    with pytest.raises(StoreDamage, match="results.jsonl: expected at least .* move .* away to redo"):
        Journal(path).records()
    path.write_text(path.read_text()[:-1] + "\n")
    path.write_text('{"id": 7}\n{"id": 1}\n{"id": 2}\n')
    with pytest.raises(StoreDamage):
        Journal(path).open()


def test_journal_adopts_a_file_written_without_a_sidecar(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "x')
    assert [r["id"] for r in Journal(path).records()] == [1, 2]
    assert Journal(path).sidecar.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(StoreDamage, match="bad.jsonl:2: not valid JSON"):
        Journal(bad).open()


def test_append_log_state_is_the_checksum_of_its_bytes(tmp_path):
    log = AppendLog(tmp_path / "x.jsonl")
    log.recover(None)
    log.append('{"a": 1}')
    log.append('{"b": 2}')
    data = (tmp_path / "x.jsonl").read_bytes()
    assert log.state() == {"bytes": 18, "lines": 2, "sha256": hashlib.sha256(data).hexdigest()}


# ---- crash consistency -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_twenty_seeded_kills_leave_a_store_equal_to_an_uninterrupted_run(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "crash_consistency.py"), "--kills", "20",
                          "--seed", "0", "--iterations", "4", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    # every killed run but the first is resumed; a run whose failpoint was never reached finishes and starts afresh
    assert result["kills"] == 20 and result["resumes"] + result["restarts_after_finishing"] >= 20
    assert len(result["kills_by_site"]) >= 5  # kills landed in several phases
    assert result["violations"] == 0, result["violation_details"]


def test_verify_command_reports_an_intact_store_and_the_damage(run):
    from typer.testing import CliRunner

    from stratagem.cli import app

    ok = CliRunner().invoke(app, ["verify", str(run)])
    assert ok.exit_code == 0 and "intact (3 iterations, 12 episodes, 3 commits verified)" in ok.output
    assert RunStore(run).problems() == []
    path = run / "episodes.jsonl"
    cut_to(path, path.stat().st_size - 300)
    bad = CliRunner().invoke(app, ["verify", str(run)])
    assert bad.exit_code == 1 and "episodes.jsonl: expected at least" in bad.output


def test_problems_finds_a_duplicated_episode_the_checksums_cannot(tiny, tmp_path):
    """An episode written twice before its commit (what a retry that kept the partial rollout would leave) passes
    the checksums, which only prove the bytes are the committed ones, but not the invariants."""
    lines = _train(tiny, tmp_path / "run", iterations=1).episodes_path.read_text().splitlines()
    dup = RunStore(tmp_path / "dup")
    dup.create({"loop": {}})
    for line in lines[:-1] + lines[:1]:
        dup._episodes.append(line)
    dup.commit(1, len(lines), {"iteration": 1})
    dup.verify()
    assert any("present more than once" in p for p in dup.problems())
