"""Presets: shipped run configs under the user's --config and flags, printed by `stratagem config show`, recorded
in the run; and the MARSHAL presets checked field by field against their reference table."""

import pytest
import yaml
from typer.testing import CliRunner

from stratagem.cli import app
from stratagem.config import ConfigError
from stratagem.preset import load_preset, preset_names, reference_table
from stratagem.training.cli import train_config
from stratagem.training.loop import RunConfig


def _show(*args):
    out = CliRunner().invoke(app, ["config", "show", *args])
    assert out.exit_code == 0, out.output
    return yaml.safe_load(out.output)


def test_laptop_is_the_default_and_is_the_dataclass_defaults():
    assert "laptop" in preset_names() and load_preset("laptop") == {}
    shown = _show()
    assert shown == _show("--preset", "laptop") == RunConfig().to_dict()
    assert shown["loop"]["preset"] == "laptop"


def test_preset_lies_under_config_and_flags(tmp_path):
    name = next(n for n in preset_names() if n != "laptop")
    preset = load_preset(name)
    section, values = next(iter(preset.items()))
    key = next(iter(values))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"loop": {"seed": 7}, "trainer": {"rank": 3}}))
    cfg, *_ = train_config(["--out", str(tmp_path / "r"), "--preset", name, "--config", str(tmp_path / "c.yaml"),
                            "--rank", "5"])
    assert cfg.loop.preset == name and cfg.loop.seed == 7 and cfg.trainer.rank == 5  # config, then flags win
    if (section, key) not in (("loop", "seed"), ("trainer", "rank")):
        assert getattr(getattr(cfg, section), key) == values[key]


def test_unknown_preset_and_preset_on_resume_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        train_config(["--out", str(tmp_path / "r"), "--preset", "nope"])
    with pytest.raises(ConfigError, match="--preset"):
        train_config(["--out", str(tmp_path / "r"), "--resume", "--preset", "laptop"])
    with pytest.raises(ConfigError, match="loop.preset"):
        RunConfig.from_dict({"loop": {"preset": "nope"}})


def test_config_show_prints_a_run_config_that_loads_back(tmp_path):
    out = CliRunner().invoke(app, ["config", "show", "--games", "kuhn_poker", "--lr", "0.01"])
    cfg = RunConfig.from_dict(yaml.safe_load(out.output))
    assert cfg.loop.games == ["kuhn_poker"] and cfg.trainer.lr == 0.01
    bad = CliRunner().invoke(app, ["config", "show", "--ppo.clip-eps", "-1"])
    assert bad.exit_code == 2 and "ppo.clip_eps" in bad.output


CONFIGS = ("GEN", "SPEC", "FIX")


def _resolved(preset):
    cfg, *_ = train_config(["--preset", preset], require_out=False)
    return cfg.to_dict()


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_marshal_presets_carry_every_mapped_reference_setting():
    """The proof of equality: each row of marshal.reference.yaml that names a field holds in each preset."""
    import yaml as _yaml

    from stratagem.preset import DIR

    meta = _yaml.safe_load((DIR / "marshal.reference.yaml").read_text())
    presets = {c: meta["configs"][c]["preset"] for c in CONFIGS}
    resolved = {c: _resolved(p) for c, p in presets.items()}
    rows = reference_table("marshal")
    mapped = [r for r in rows if "field" in r]
    unmapped = [r for r in rows if "field" not in r]
    assert len(mapped) >= 50 and all(r.get("none") for r in unmapped)
    assert all(set(r) <= {"key", "reference", "source", "field", "value", "note", "none"} and r.get("source")
               for r in rows)  # a row mis-split by YAML shows up as unknown keys
    for row in mapped:
        want = row.get("value", row["reference"])
        for c in CONFIGS:
            w = want[c] if isinstance(want, dict) and set(want) == set(CONFIGS) else want
            got = _get(resolved[c], row["field"])
            assert got == w, f"{presets[c]}: {row['field']} = {got!r}, the reference row {row['key']!r} wants {w!r}"
    # and every value a preset file sets is explained by a row
    fields = {r["field"] for r in mapped}
    for p in presets.values():
        for section, values in load_preset(p).items():
            for key in values:
                assert f"{section}.{key}" in fields, f"{p} sets {section}.{key}, which no reference row explains"


def test_mirage_preset_carries_every_mapped_reference_setting():
    """mirage.reference.yaml row by row against the `mirage` preset and against MysteryConfig.mirage() (what
    `eval mystery --protocol mirage` plays), and every value the preset sets is explained by a row."""
    from stratagem.games.mystery.game import MysteryConfig

    resolved = _resolved("mirage")
    rows = reference_table("mirage")
    mapped = [r for r in rows if "field" in r]
    assert len(mapped) >= 12 and all(r.get("none") for r in rows if "field" not in r)
    assert all(set(r) <= {"key", "reference", "source", "field", "value", "note", "none"} and r.get("source")
               for r in rows)
    direct = MysteryConfig.mirage()
    for row in mapped:
        want = row.get("value", row["reference"])
        assert _get(resolved, row["field"]) == want, f"{row['field']}: the row {row['key']!r} wants {want!r}"
        if row["field"].startswith("mystery."):
            assert getattr(direct, row["field"].split(".")[-1]) == want, row["field"]
    fields = {r["field"] for r in mapped}

    def flat(d, prefix):
        for k, v in d.items():
            yield from flat(v, f"{prefix}.{k}") if isinstance(v, dict) else [f"{prefix}.{k}"]

    for key in flat(load_preset("mirage"), ""):
        assert key[1:] in fields, f"mirage sets {key[1:]}, which no reference row explains"
