"""Presets: named, shipped run configs (plain YAML in `stratagem/presets/`) that `stratagem train --preset NAME`
loads under the user's `--config` and flags. `laptop` is today's CPU defaults (an empty file: every field keeps its
default); the `marshal*` presets carry MARSHAL's released configs over field by field, and
`stratagem/presets/marshal.reference.yaml` lists every setting of those configs with the field it maps to (or why
none), which tests/test_presets.py checks against the presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DIR = Path(__file__).resolve().parent / "presets"
DEFAULT = "laptop"


def preset_names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.yaml") if not p.stem.endswith(".reference"))


def load_preset(name: str) -> dict[str, Any]:
    """The sections a preset sets (a nested mapping, as a --config file holds)."""
    path = DIR / f"{name}.yaml"
    if name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(preset_names())}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {name}: expected a mapping of sections, got {type(data).__name__}")
    return data


def reference_table(name: str = "marshal") -> list[dict[str, Any]]:
    """The rows of a preset family's reference table: key, value, source, and `field` (dotted RunConfig path) with
    `presets` (which presets carry it) or `none` (why no field carries it)."""
    return yaml.safe_load((DIR / f"{name}.reference.yaml").read_text(encoding="utf-8"))["settings"]
