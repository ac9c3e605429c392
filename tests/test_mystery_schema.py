"""Script format validation, through the library and through `stratagem mystery validate`."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from stratagem.cli import app
from stratagem.games.mystery.library import SCRIPTS_DIR, load_script, shipped_scripts
from stratagem.games.mystery.schema import FIELDS, ScriptError, validate_script_dir

runner = CliRunner()


def write_unseen(folder, multi_stage=False):
    """A small script in the same format that ships nowhere."""
    folder.mkdir(parents=True)
    chars = {n: {f: f"{n} {f.lower()} text." for f in FIELDS} for n in ("Ann Lee", "Ben Cole", "Cal Moss")}
    clues = {"Attic": ["A broken vase.", "A muddy glove."], "Ann Lee": "You saw Ben at the attic door."}
    if multi_stage:
        chars = {"Stage 1": chars, "Stage 2": {"Ben Cole": {"Script": "Ben remembers more."}}}
        clues = {"Stage 1": {"Attic": ["A broken vase."]}, "Stage 2": {"Cellar": ["A key."]},
                 "Ann Lee": "You saw Ben at the attic door."}
    (folder / "script.json").write_text(json.dumps(chars))
    (folder / "clues.json").write_text(json.dumps(clues))
    (folder / "meta.json").write_text(json.dumps({"title": "Unseen", "culprits": ["Ben Cole"], "truth": "Ben did it."}))
    return folder


@pytest.mark.parametrize("name", shipped_scripts())
def test_shipped_scripts_are_valid(name):
    assert validate_script_dir(SCRIPTS_DIR / name) == []
    s = load_script(name)
    assert s.total_clues >= 10 and all(s.field_text(c, "Ability") for c in s.characters)
    for c in s.characters:  # the culprit may lie, nobody else may
        assert ("may lie" in s.field_text(c, "Ability")) == (c in s.culprits)


def test_shipped_set_covers_the_three_kinds():
    kinds = {(len(load_script(n).characters), load_script(n).multi_stage) for n in shipped_scripts()}
    assert any(4 <= k <= 5 and not m for k, m in kinds)
    assert any(k >= 6 and not m for k, m in kinds)
    assert any(m for _, m in kinds)


@pytest.mark.parametrize("multi", [False, True])
def test_cli_accepts_an_unseen_script(tmp_path, multi):
    folder = write_unseen(tmp_path / "unseen", multi)
    r = runner.invoke(app, ["mystery", "validate", str(folder)])
    assert r.exit_code == 0, r.output
    assert "ok:" in r.output and "3 characters" in r.output and f"{2 if multi else 1} stage(s)" in r.output
    s = load_script(folder)
    assert s.notes == {"Ann Lee": "You saw Ben at the attic door."}
    if multi:
        assert s.field_text("Ben Cole", "Script") == "Ben Cole script text.\nBen remembers more."


def test_cli_validates_every_shipped_script_in_a_folder():
    r = runner.invoke(app, ["mystery", "validate", str(SCRIPTS_DIR)])
    assert r.exit_code == 0, r.output
    assert r.output.count("ok:") == len(shipped_scripts())


def _break(folder, file, mutate):
    data = json.loads((folder / file).read_text())
    mutate(data)
    (folder / file).write_text(json.dumps(data))


@pytest.mark.parametrize("file,mutate,needle", [
    ("script.json", lambda d: d["Nora Vance"].pop("Ability"), "script.json: Nora Vance.Ability: expected the field (missing)"),
    ("script.json", lambda d: d["Owen Hale"].update(Purpose=3), "script.json: Owen Hale.Purpose: expected a string"),
    ("clues.json", lambda d: d.update({"Lamp Room": "a single clue"}), "clues.json: Lamp Room: expected a list of clue texts"),
    ("clues.json", lambda d: d["Boathouse"].append(""), "clues.json: Boathouse[3]: expected a non-empty clue text"),
    ("meta.json", lambda d: d.update(culprits=["Elias Marr"]), "meta.json: culprits[0]: expected a character"),
    ("meta.json", lambda d: d.pop("truth"), "meta.json: truth: expected a non-empty string"),
])
def test_cli_rejects_a_broken_copy(tmp_path, file, mutate, needle):
    folder = tmp_path / "broken"
    shutil.copytree(SCRIPTS_DIR / "lighthouse", folder)
    _break(folder, file, mutate)
    r = runner.invoke(app, ["mystery", "validate", str(folder)])
    assert r.exit_code == 1
    assert needle in r.output and str(folder) in r.output
    with pytest.raises(ScriptError, match="expected"):
        load_script(folder)


def test_invalid_json_and_missing_files(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "script.json").write_text("{not json")
    errs = [str(e) for e in validate_script_dir(folder)]
    assert any(e.startswith("script.json: line 1 column 2: expected valid JSON") for e in errs)
    assert any(e.startswith("clues.json: <root>: expected the file to exist") for e in errs)
    assert any(e.startswith("meta.json") for e in errs)


def test_multi_stage_mismatch(tmp_path):
    folder = write_unseen(tmp_path / "m", multi_stage=True)
    _break(folder, "clues.json", lambda d: d.update({"Stage 3": {"Roof": ["x"]}}))
    _break(folder, "script.json", lambda d: d["Stage 2"].update({"Dan Ray": {"Script": "who?"}}))
    errs = [str(e) for e in validate_script_dir(folder)]
    assert "clues.json: Stage 3: expected a stage of script.json (Stage 1, Stage 2)" in errs
    assert any(e.startswith("script.json: Stage 2.Dan Ray: expected a character of the first stage") for e in errs)


def test_cli_list_and_unknown_script():
    r = runner.invoke(app, ["mystery", "list"])
    assert r.exit_code == 0 and all(n in r.output for n in shipped_scripts())
    r = runner.invoke(app, ["mystery", "validate", "no-such-script"])
    assert r.exit_code == 1
