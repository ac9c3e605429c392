"""The script format (compatible with the MIRAGE benchmark's published layout) and its validation.

A script is a folder with three JSON files:

- `script.json`: character name -> the six fields `Story`, `Script`, `Relationship`, `Performance`, `Purpose`,
  `Ability` (strings). A multi-stage script nests them per stage: `{"Stage 1": {name: fields}, "Stage 2": ...}`.
  Stage 1 must give every character all six fields; a later stage adds text to any of them (missing fields mean
  "nothing new in this stage"), for characters of stage 1 only.
- `clues.json`: location (or person) -> list of clue texts; multi-stage: `{"Stage 1": {location: [...]}, ...}`.
  A top-level entry whose key is a character name and whose value is a string is a private note handed to that
  character (MIRAGE uses this for per-character hints).
- `meta.json` (ours; MIRAGE keeps the truth in a shared `Truth.json`): `{"title": str, "culprits": [names],
  "truth": str}`, optionally `"description"` (a one-line public premise every character sees).

`validate_script_dir` collects every problem; each error names the file, the path inside it and what was expected.
`load_script` validates and returns a `Script`, or raises `ScriptError` holding all the errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("Story", "Script", "Relationship", "Performance", "Purpose", "Ability")
SCRIPT_FILE, CLUES_FILE, META_FILE = "script.json", "clues.json", "meta.json"
_STAGE_KEY = re.compile(r"^Stage\s+(\d+)$")


@dataclass(frozen=True)
class SchemaError:
    file: str
    path: str
    expected: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path or '<root>'}: expected {self.expected}"


class ScriptError(ValueError):
    def __init__(self, where: str, errors: list[SchemaError]):
        self.errors = errors
        super().__init__(f"invalid mystery script {where}:\n" + "\n".join(f"  {e}" for e in errors))


@dataclass
class Stage:
    characters: dict[str, dict[str, str]]  # name -> field -> text (later stages: only what they add)
    clues: dict[str, list[str]]  # location -> clue texts, in reveal order


@dataclass
class Script:
    name: str
    path: str
    title: str
    culprits: list[str]
    truth: str
    description: str
    characters: list[str]  # in file order: the seating order before any shuffle
    stages: list[Stage]
    notes: dict[str, str] = field(default_factory=dict)  # private per-character notes from clues.json

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    @property
    def total_clues(self) -> int:
        return sum(len(v) for s in self.stages for v in s.clues.values())

    def field_text(self, name: str, fld: str, upto_stage: int | None = None) -> str:
        """A character's field with the text of every stage up to `upto_stage` (inclusive) joined."""
        stages = self.stages if upto_stage is None else self.stages[: upto_stage + 1]
        return "\n".join(t for s in stages if (t := s.characters.get(name, {}).get(fld, "")))


def _read_json(path: Path, errors: list[SchemaError]) -> Any:
    if not path.exists():
        errors.append(SchemaError(path.name, "", f"the file to exist in {path.parent}"))
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        errors.append(SchemaError(path.name, f"line {e.lineno} column {e.colno}", f"valid JSON ({e.msg})"))
    except UnicodeDecodeError as e:
        errors.append(SchemaError(path.name, "", f"UTF-8 text ({e})"))
    return None


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _stage_items(data: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The stages of a multi-stage file in numeric order, or None when the file is single-stage."""
    staged = [(k, v) for k, v in data.items() if _STAGE_KEY.match(k)]
    if not staged:
        return None
    return sorted(staged, key=lambda kv: int(_STAGE_KEY.match(kv[0]).group(1)))


def _check_fields(fields: Any, where: str, required: bool, errors: list[SchemaError]) -> dict[str, str]:
    if not isinstance(fields, dict):
        errors.append(SchemaError(SCRIPT_FILE, where, f"an object with the fields {', '.join(FIELDS)}"))
        return {}
    out: dict[str, str] = {}
    for f in FIELDS:
        if f not in fields:
            if required:
                errors.append(SchemaError(SCRIPT_FILE, f"{where}.{f}", "the field (missing)"))
            continue
        if not isinstance(fields[f], str):
            errors.append(SchemaError(SCRIPT_FILE, f"{where}.{f}", f"a string, got {type(fields[f]).__name__}"))
            continue
        out[f] = fields[f]
    for k in fields:
        if k not in FIELDS:
            errors.append(SchemaError(SCRIPT_FILE, f"{where}.{k}", f"one of the fields {', '.join(FIELDS)}"))
    if required and "Ability" in out and not out["Ability"].strip():
        errors.append(SchemaError(SCRIPT_FILE, f"{where}.Ability", "a non-empty text (whether they may lie)"))
    return out


def _check_clue_map(data: Any, where: str, names: set[str], errors: list[SchemaError],
                    notes: dict[str, str]) -> dict[str, list[str]]:
    if not isinstance(data, dict):
        errors.append(SchemaError(CLUES_FILE, where, "an object mapping each location to a list of clues"))
        return {}
    out: dict[str, list[str]] = {}
    for loc, clues in data.items():
        p = f"{where}.{loc}" if where else loc
        if not loc.strip():
            errors.append(SchemaError(CLUES_FILE, p, "a non-empty location name"))
        elif isinstance(clues, str) and loc in names:
            notes[loc] = clues
        elif not isinstance(clues, list):
            errors.append(SchemaError(CLUES_FILE, p, f"a list of clue texts, got {type(clues).__name__}"))
        elif not clues:
            errors.append(SchemaError(CLUES_FILE, p, "at least one clue"))
        else:
            for i, c in enumerate(clues):
                if not _is_text(c):
                    errors.append(SchemaError(CLUES_FILE, f"{p}[{i}]", "a non-empty clue text"))
            out[loc] = [c for c in clues if _is_text(c)]
    return out


def _parse(folder: Path) -> tuple[Script | None, list[SchemaError]]:
    errors: list[SchemaError] = []
    if not folder.is_dir():
        return None, [SchemaError(str(folder), "", "a script folder holding script.json, clues.json, meta.json")]
    raw_script = _read_json(folder / SCRIPT_FILE, errors)
    raw_clues = _read_json(folder / CLUES_FILE, errors)
    raw_meta = _read_json(folder / META_FILE, errors)

    stages_chars: list[dict[str, dict[str, str]]] = []
    names: list[str] = []
    if raw_script is not None:
        if not isinstance(raw_script, dict) or not raw_script:
            errors.append(SchemaError(SCRIPT_FILE, "", "an object mapping character names (or 'Stage N') to fields"))
        else:
            staged = _stage_items(raw_script)
            if staged is not None and len(staged) != len(raw_script):
                extra = [k for k in raw_script if not _STAGE_KEY.match(k)]
                errors.append(SchemaError(SCRIPT_FILE, extra[0], "only 'Stage N' keys in a multi-stage script"))
            for si, (key, chars) in enumerate(staged or [("", raw_script)]):
                if not isinstance(chars, dict) or not chars:
                    errors.append(SchemaError(SCRIPT_FILE, key, "an object mapping character names to fields"))
                    stages_chars.append({})
                    continue
                stage: dict[str, dict[str, str]] = {}
                for name, fields in chars.items():
                    where = f"{key}.{name}" if key else name
                    if not name.strip():
                        errors.append(SchemaError(SCRIPT_FILE, where, "a non-empty character name"))
                        continue
                    if si > 0 and name not in names:
                        errors.append(SchemaError(SCRIPT_FILE, where, f"a character of the first stage ({', '.join(names)})"))
                        continue
                    stage[name] = _check_fields(fields, where, required=si == 0, errors=errors)
                    if si == 0:
                        names.append(name)
                stages_chars.append(stage)
            if len(names) < 3:
                errors.append(SchemaError(SCRIPT_FILE, "", f"at least 3 characters, got {len(names)}"))

    notes: dict[str, str] = {}
    stages_clues: list[dict[str, list[str]]] = []
    if raw_clues is not None:
        if not isinstance(raw_clues, dict):
            errors.append(SchemaError(CLUES_FILE, "", "an object mapping locations (or 'Stage N') to clue lists"))
        else:
            staged = _stage_items(raw_clues)
            if staged is None:
                stages_clues.append(_check_clue_map(raw_clues, "", set(names), errors, notes))
            else:
                for k, v in raw_clues.items():
                    if not _STAGE_KEY.match(k) and not (k in names and isinstance(v, str)):
                        errors.append(SchemaError(CLUES_FILE, k, "a 'Stage N' key, or a character name with a note"))
                    elif not _STAGE_KEY.match(k):
                        notes[k] = v
                by_key = dict(staged)
                script_keys = [k for k, _ in (_stage_items(raw_script) or [])] if isinstance(raw_script, dict) else []
                for k in by_key:
                    if script_keys and k not in script_keys:
                        errors.append(SchemaError(CLUES_FILE, k, f"a stage of script.json ({', '.join(script_keys)})"))
                if not script_keys and stages_chars:
                    errors.append(SchemaError(CLUES_FILE, "", "a single-stage clue map, as script.json is single-stage"))
                for k in script_keys or list(by_key):
                    stages_clues.append(_check_clue_map(by_key[k], k, set(names), errors, notes) if k in by_key else {})
            if stages_clues and not any(stages_clues):
                errors.append(SchemaError(CLUES_FILE, "", "at least one location with clues"))

    title, culprits, truth, description = folder.name, [], "", ""
    if raw_meta is not None:
        if not isinstance(raw_meta, dict):
            errors.append(SchemaError(META_FILE, "", "an object with title, culprits, truth"))
        else:
            for k in ("title", "truth"):
                if not _is_text(raw_meta.get(k)):
                    errors.append(SchemaError(META_FILE, k, "a non-empty string"))
            title = raw_meta.get("title") if _is_text(raw_meta.get("title")) else folder.name
            truth = raw_meta.get("truth") if _is_text(raw_meta.get("truth")) else ""
            description = raw_meta.get("description", "")
            if not isinstance(description, str):
                errors.append(SchemaError(META_FILE, "description", "a string"))
                description = ""
            c = raw_meta.get("culprits")
            if not isinstance(c, list) or not c or not all(isinstance(x, str) for x in c):
                errors.append(SchemaError(META_FILE, "culprits", "a non-empty list of character names"))
            else:
                for i, x in enumerate(c):
                    if names and x not in names:
                        errors.append(SchemaError(META_FILE, f"culprits[{i}]", f"a character of script.json "
                                                  f"({', '.join(names)}), got {x!r}"))
                culprits = list(c)
                if names and len(set(culprits)) >= len(names):
                    errors.append(SchemaError(META_FILE, "culprits", "fewer culprits than characters"))
            for k in raw_meta:
                if k not in ("title", "culprits", "truth", "description"):
                    errors.append(SchemaError(META_FILE, k, "one of the keys title, culprits, truth, description"))

    if errors:
        return None, errors
    stages = [Stage(characters=c, clues=stages_clues[i] if i < len(stages_clues) else {})
              for i, c in enumerate(stages_chars)]
    return Script(name=folder.name, path=str(folder.resolve()), title=title, culprits=culprits, truth=truth,
                  description=description, characters=names, stages=stages, notes=notes), []


def validate_script_dir(folder: str | Path) -> list[SchemaError]:
    """Every problem of the script folder (empty when it is valid)."""
    return _parse(Path(folder))[1]


def load_script_dir(folder: str | Path) -> Script:
    script, errors = _parse(Path(folder))
    if errors:
        raise ScriptError(str(folder), errors)
    return script
