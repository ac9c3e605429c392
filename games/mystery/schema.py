"""The script format (the MIRAGE benchmark's published layout, as it is) and its validation.

A script is a folder with these JSON files (English names, or the Chinese names of MIRAGE's Chinese half):

- `script.json` / `人物剧本.json`: character name -> the six fields `Story`, `Script`, `Relationship`, `Performance`,
  `Purpose`, `Ability` (strings; `Ability` may be empty: no special ability). A multi-stage script nests them per
  stage: `{"Stage 1": {name: fields}, "Stage 2": ...}` (or `第一幕`, `第二幕`, ...). Stage 1 gives every character
  all six fields; a later stage adds text to any of them (missing fields mean "nothing new in this stage"), for
  characters of stage 1 only, which a later stage may show under a new name that names the old one, e.g.
  `Xiao Nuan (Little Fox)` for `Little Fox` (the character keeps their seat; prompts use the stage's name). A
  top-level string `show` of a multi-stage script is a prologue prepended to every character's `Script`.
- `clues.json` / `线索.json`: location (or person) -> list of clue texts; multi-stage: `{"Stage 1": {location: [...]},
  ...}` (a single-stage map with a multi-stage script: every clue is there from stage 1, as MIRAGE plays it).
  A top-level entry whose value is a string and whose key is (part of) a character's name is a private note handed
  to that character. An entry whose value maps keywords to texts and whose key names a character (`Memory of
  Junmeng Chen`) holds that character's memories: each is handed to them when its keyword appears in the public
  conversation (MIRAGE's rule), and is no searchable place.
- the truth and the culprits: our own scripts keep them in `meta.json`: `{"title": str, "culprits": [names],
  "truth": str}`, optionally `"description"` (a one-line public premise). A MIRAGE dataset folder has no meta.json:
  the truth is `Truth.json` beside the script folders (script folder name -> text) and the culprits come from the
  benchmark's table shipped with the package (`mirage_culprits.yaml`, keyed by language and script), which also
  names the suspects of the two-detective script and its public clues.

`validate_script_dir` collects every problem; each error names the file, the path inside it and what was expected.
`load_script` validates and returns a `Script`, or raises `ScriptError` holding all the errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeGuard

import yaml

FIELDS = ("Story", "Script", "Relationship", "Performance", "Purpose", "Ability")
SCRIPT_FILE, CLUES_FILE, META_FILE, TRUTH_FILE = "script.json", "clues.json", "meta.json", "Truth.json"
SCRIPT_FILES = {"script.json": "En", "人物剧本.json": "Zh"}  # file name -> MIRAGE language
CLUES_FILES = {"clues.json": "En", "线索.json": "Zh"}
CULPRIT_TABLE = Path(__file__).parent / "mirage_culprits.yaml"
_STAGE_EN = re.compile(r"^Stage\s+(\d+)$")
_STAGE_ZH = re.compile(r"^第([一二三四五六七八九十]+|\d+)幕$")
_ZH_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_RENAMED = re.compile(r"^(.+?)\s*[(（]\s*(.+?)\s*[)）]\s*$")
PROLOGUE_KEY = "show"


def stage_number(key: str) -> int | None:
    """1-based number of a stage key (`Stage 2`, `第二幕`), else None."""
    m = _STAGE_EN.match(key)
    if m:
        return int(m.group(1))
    m = _STAGE_ZH.match(key)
    if not m:
        return None
    t = m.group(1)
    if t.isdigit():
        return int(t)
    if t == "十":
        return 10
    if t.startswith("十"):
        return 10 + _ZH_DIGITS[t[1]]
    if t.endswith("十"):
        return 10 * _ZH_DIGITS[t[0]]
    if "十" in t:
        return 10 * _ZH_DIGITS[t[0]] + _ZH_DIGITS[t[2]]
    return _ZH_DIGITS.get(t)


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
    names: dict[str, str] = field(default_factory=dict)  # first-stage name -> the name this stage shows, if renamed
    public: list[str] = field(default_factory=list)  # clues read to everyone when this stage begins


@dataclass
class Script:
    name: str
    path: str
    title: str
    culprits: list[str]
    truth: str
    description: str
    characters: list[str]  # first-stage names, in file order: the seating order before any shuffle
    stages: list[Stage]
    notes: dict[str, str] = field(default_factory=dict)  # private per-character notes from the clue file
    memories: dict[str, dict[str, str]] = field(default_factory=dict)  # character -> keyword -> memory
    candidates: list[str] = field(default_factory=list)  # suspects voted on when they are not the players
    language: str = "En"
    source: str = "meta"  # 'meta' (meta.json) or 'mirage' (Truth.json + the shipped culprit table)
    kind: str = ""  # MIRAGE's environment class of the script (rules.py), '' for a script of our own

    @property
    def multi_stage(self) -> bool:
        return len(self.stages) > 1

    @property
    def total_clues(self) -> int:
        return sum(len(v) for s in self.stages for v in s.clues.values())

    @property
    def suspects(self) -> list[str]:
        """Who can be voted for: the candidates when the script names some, else the characters."""
        return list(self.candidates or self.characters)

    def field_text(self, name: str, fld: str, upto_stage: int | None = None) -> str:
        """A character's field with the text of every stage up to `upto_stage` (inclusive) joined."""
        stages = self.stages if upto_stage is None else self.stages[: upto_stage + 1]
        return "\n".join(t for s in stages if (t := s.characters.get(name, {}).get(fld, "")))

    def shown_name(self, name: str, stage: int) -> str:
        """The name a character goes by in `stage` (0-based): the latest rename up to it, else the first name."""
        for st in reversed(self.stages[: stage + 1]):
            if name in st.names:
                return st.names[name]
        return name

    def aliases(self) -> dict[str, list[str]]:
        """Every other name of each character (stage renames, and the name inside or before their parentheses)."""
        out: dict[str, list[str]] = {}
        for st in self.stages:
            for c, shown in st.names.items():
                m = _RENAMED.match(shown)
                for a in (shown, *(m.groups() if m else ())):
                    if a != c and a not in out.setdefault(c, []):
                        out[c].append(a)
        return out


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


def _is_text(v: Any) -> TypeGuard[str]:
    return isinstance(v, str) and bool(v.strip())


def _stage_items(data: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The stages of a multi-stage file in numeric order, or None when the file is single-stage."""
    staged = [(n, k, v) for k, v in data.items() if (n := stage_number(k)) is not None]
    if not staged:
        return None
    return [(k, v) for _, k, v in sorted(staged, key=lambda nkv: nkv[0])]


def find_file(folder: Path, names: dict[str, str]) -> Path | None:
    for n in names:
        if (folder / n).exists():
            return folder / n
    return None


def is_script_dir(folder: Path) -> bool:
    return find_file(folder, SCRIPT_FILES) is not None


@lru_cache(maxsize=1)
def culprit_table() -> dict[str, dict[str, dict[str, Any]]]:
    """The MIRAGE culprit table shipped with the package: language -> script folder -> entry."""
    return yaml.safe_load(CULPRIT_TABLE.read_text(encoding="utf-8"))


def _check_fields(fields: Any, where: str, required: bool, errors: list[SchemaError], file: str) -> dict[str, str]:
    if not isinstance(fields, dict):
        errors.append(SchemaError(file, where, f"an object with the fields {', '.join(FIELDS)}"))
        return {}
    out: dict[str, str] = {}
    for f in FIELDS:
        if f not in fields:
            if required:
                errors.append(SchemaError(file, f"{where}.{f}", "the field (missing)"))
            continue
        if not isinstance(fields[f], str):
            errors.append(SchemaError(file, f"{where}.{f}", f"a string, got {type(fields[f]).__name__}"))
            continue
        out[f] = fields[f]
    for k in fields:
        if k not in FIELDS:
            errors.append(SchemaError(file, f"{where}.{k}", f"one of the fields {', '.join(FIELDS)}"))
    return out


def _owner(key: str, shown: dict[str, list[str]]) -> str | None:
    """The character a note or memory entry belongs to: the one whose (any-stage) name is the key, else the only one
    whose name contains the key or is contained in it (`Xiao Nuan` -> `Little Fox`, shown as `Xiao Nuan (Little
    Fox)`; `Memory of Junmeng Chen` -> `Junmeng Chen`)."""
    for c, names in shown.items():
        if key in names:
            return c
    hits = {c for c, names in shown.items() for n in names if key in n or n in key}
    return hits.pop() if len(hits) == 1 else None


def _check_clue_map(data: Any, where: str, shown: dict[str, list[str]], errors: list[SchemaError],
                    notes: dict[str, str], memories: dict[str, dict[str, str]], file: str) -> dict[str, list[str]]:
    if not isinstance(data, dict):
        errors.append(SchemaError(file, where, "an object mapping each location to a list of clues"))
        return {}
    out: dict[str, list[str]] = {}
    for loc, clues in data.items():
        p = f"{where}.{loc}" if where else loc
        if not loc.strip():
            errors.append(SchemaError(file, p, "a non-empty location name"))
        elif isinstance(clues, str) and (note_owner := _owner(loc, shown)):
            notes[note_owner] = clues
        elif isinstance(clues, dict):
            owner = _owner(loc, shown)
            if owner is None:
                errors.append(SchemaError(file, p, "a list of clue texts, or keyword -> memory texts under a key "
                                          "that names one character"))
            elif not clues or not all(_is_text(k) and _is_text(v) for k, v in clues.items()):
                errors.append(SchemaError(file, p, "a non-empty map of keyword -> memory text"))
            else:
                memories.setdefault(owner, {}).update(clues)
        elif not isinstance(clues, list):
            errors.append(SchemaError(file, p, f"a list of clue texts, got {type(clues).__name__}"))
        elif not clues:
            errors.append(SchemaError(file, p, "at least one clue"))
        else:
            for i, c in enumerate(clues):
                if not _is_text(c):
                    errors.append(SchemaError(file, f"{p}[{i}]", "a non-empty clue text"))
            out[loc] = [c for c in clues if _is_text(c)]
    return out


def _renamed_from(name: str, names: list[str]) -> str | None:
    """The first-stage character a later stage's new name refers to: the one named in its parentheses, else the only
    one whose name it contains (MIRAGE: `old_name in name`)."""
    m = _RENAMED.match(name)
    if m and m.group(2) in names:
        return m.group(2)
    hits = [n for n in names if n in name]
    return hits[0] if len(hits) == 1 else None


def _parse(folder: Path) -> tuple[Script | None, list[SchemaError]]:
    errors: list[SchemaError] = []
    if not folder.is_dir():
        return None, [SchemaError(str(folder), "", "a script folder holding script.json and clues.json (and "
                                  "meta.json, or Truth.json beside it)")]
    script_path = find_file(folder, SCRIPT_FILES) or folder / SCRIPT_FILE
    clues_path = find_file(folder, CLUES_FILES) or folder / (CLUES_FILE if script_path.name == SCRIPT_FILE
                                                                     else "线索.json")
    sfile, cfile = script_path.name, clues_path.name
    language = SCRIPT_FILES.get(sfile, "En")
    raw_script = _read_json(script_path, errors)
    raw_clues = _read_json(clues_path, errors)

    stages_chars: list[dict[str, dict[str, str]]] = []
    stage_names: list[dict[str, str]] = []
    names: list[str] = []
    prologue = ""
    script_keys: list[str] = []
    if raw_script is not None:
        if not isinstance(raw_script, dict) or not raw_script:
            errors.append(SchemaError(sfile, "", "an object mapping character names (or 'Stage N') to fields"))
        else:
            staged = _stage_items(raw_script)
            if staged is not None:
                script_keys = [k for k, _ in staged]
                for k, v in raw_script.items():
                    if stage_number(k) is not None:
                        continue
                    if k == PROLOGUE_KEY and isinstance(v, str):
                        prologue = v
                    else:
                        errors.append(SchemaError(sfile, k, "only 'Stage N' keys (and a 'show' prologue string) "
                                                  "in a multi-stage script"))
            for si, (key, chars) in enumerate(staged or [("", raw_script)]):
                stage_names.append({})
                if not isinstance(chars, dict) or not chars:
                    errors.append(SchemaError(sfile, key, "an object mapping character names to fields"))
                    stages_chars.append({})
                    continue
                stage: dict[str, dict[str, str]] = {}
                for name, fields in chars.items():
                    where = f"{key}.{name}" if key else name
                    if not name.strip():
                        errors.append(SchemaError(sfile, where, "a non-empty character name"))
                        continue
                    canon = name
                    if si > 0 and name not in names:
                        canon = _renamed_from(name, names)
                        if canon is None:
                            errors.append(SchemaError(sfile, where, f"a character of the first stage "
                                                      f"({', '.join(names)}), or a new name that contains one"))
                            continue
                        stage_names[si][canon] = name
                    stage[canon] = _check_fields(fields, where, required=si == 0, errors=errors, file=sfile)
                    if si == 0:
                        names.append(name)
                stages_chars.append(stage)
            if len(names) < 2:
                errors.append(SchemaError(sfile, "", f"at least 2 characters, got {len(names)}"))
            if prologue and stages_chars:
                for fields in stages_chars[0].values():
                    fields["Script"] = prologue + "\n" + fields.get("Script", "")

    shown = {c: [c, *(sn[c] for sn in stage_names if c in sn)] for c in names}
    entry = culprit_table().get(language, {}).get(folder.name) if not (folder / META_FILE).exists() else None
    public_keys = {str(k): int(v) for k, v in (entry or {}).get("public_clues", {}).items()}
    public: dict[int, list[str]] = {}

    def take_public(m: Any) -> Any:
        if isinstance(m, dict):
            for k in public_keys:
                if k in m:
                    v = m.pop(k)
                    public.setdefault(public_keys[k] - 1, []).extend(v if isinstance(v, list) else [str(v)])
        return m

    notes: dict[str, str] = {}
    memories: dict[str, dict[str, str]] = {}
    stages_clues: list[dict[str, list[str]]] = []
    if raw_clues is not None:
        if not isinstance(raw_clues, dict):
            errors.append(SchemaError(cfile, "", "an object mapping locations (or 'Stage N') to clue lists"))
        else:
            staged = _stage_items(raw_clues)
            if staged is None:
                stages_clues.append(_check_clue_map(take_public(dict(raw_clues)), "", shown, errors, notes,
                                                    memories, cfile))
            else:
                for k, v in raw_clues.items():
                    if stage_number(k) is not None:
                        continue
                    owner = _owner(k, shown)
                    if isinstance(v, str) and owner:
                        notes[owner] = v
                    elif isinstance(v, dict) and owner and all(_is_text(x) and _is_text(y) for x, y in v.items()):
                        memories.setdefault(owner, {}).update(v)
                    else:
                        errors.append(SchemaError(cfile, k, "a 'Stage N' key, or a character's name with a note"))
                by_key = dict(staged)
                for k in by_key:
                    if script_keys and k not in script_keys:
                        errors.append(SchemaError(cfile, k, f"a stage of {sfile} ({', '.join(script_keys)})"))
                if not script_keys and stages_chars:
                    errors.append(SchemaError(cfile, "", f"a single-stage clue map, as {sfile} is single-stage"))
                for k in script_keys or list(by_key):
                    stages_clues.append(_check_clue_map(take_public(dict(by_key[k])), k, shown, errors, notes,
                                                        memories, cfile) if k in by_key else {})
            if stages_clues and not any(stages_clues):
                errors.append(SchemaError(cfile, "", "at least one location with clues"))

    title, culprits, truth, description, candidates, source = folder.name, [], "", "", [], "meta"
    if (folder / META_FILE).exists():
        raw_meta = _read_json(folder / META_FILE, errors)
        if raw_meta is not None and not isinstance(raw_meta, dict):
            errors.append(SchemaError(META_FILE, "", "an object with title, culprits, truth"))
        elif raw_meta is not None:
            for k in ("title", "truth"):
                if not _is_text(raw_meta.get(k)):
                    errors.append(SchemaError(META_FILE, k, "a non-empty string"))
            meta_title, meta_truth = raw_meta.get("title"), raw_meta.get("truth")
            title = meta_title if _is_text(meta_title) else folder.name
            truth = meta_truth if _is_text(meta_truth) else ""
            description = raw_meta.get("description", "")
            if not isinstance(description, str):
                errors.append(SchemaError(META_FILE, "description", "a string"))
                description = ""
            c = raw_meta.get("culprits")
            if not isinstance(c, list) or not c or not all(isinstance(x, str) for x in c):
                errors.append(SchemaError(META_FILE, "culprits", "a non-empty list of character names"))
            else:
                culprits = list(c)
            for k in raw_meta:
                if k not in ("title", "culprits", "truth", "description"):
                    errors.append(SchemaError(META_FILE, k, "one of the keys title, culprits, truth, description"))
    elif entry is None:
        known = ", ".join(f"{lang}: {', '.join(v)}" for lang, v in culprit_table().items())
        errors.append(SchemaError(META_FILE, "", f"the file to exist in {folder}, or a MIRAGE script folder with "
                                  f"{TRUTH_FILE} beside it whose name is in the shipped culprit table ({known})"))
    else:
        source = "mirage"
        culprits, candidates = list(entry["culprits"]), list(entry.get("candidates", []))
        truth_file = folder.parent / TRUTH_FILE
        raw_truth = _read_json(truth_file, errors) if truth_file.exists() else None
        key = entry.get("truth_key", folder.name)
        if not truth_file.exists():
            errors.append(SchemaError(TRUTH_FILE, "", f"the file to exist in {folder.parent} (a MIRAGE dataset "
                                      "folder keeps every script's truth there)"))
        elif raw_truth is not None and not (isinstance(raw_truth, dict) and _is_text(raw_truth.get(key))):
            errors.append(SchemaError(TRUTH_FILE, key, f"the truth of {folder.name!r} (a non-empty string)"))
        else:
            truth = raw_truth[key] if raw_truth else ""
    if culprits:
        pool = candidates or names
        file = META_FILE if source == "meta" else CULPRIT_TABLE.name
        for i, x in enumerate(culprits):
            if names and x not in pool:
                errors.append(SchemaError(file, f"culprits[{i}]", f"a character of {sfile} ({', '.join(pool)}), "
                                          f"got {x!r}"))
        if names and not candidates and len(set(culprits)) >= len(names):
            errors.append(SchemaError(file, "culprits", "fewer culprits than characters"))

    if errors:
        return None, errors
    stages = [Stage(characters=c, clues=stages_clues[i] if i < len(stages_clues) else {}, names=stage_names[i],
                    public=public.get(i, []))
              for i, c in enumerate(stages_chars)]
    return Script(name=folder.name, path=str(folder.resolve()), title=title, culprits=culprits, truth=truth,
                  description=description, characters=names, stages=stages, notes=notes, memories=memories,
                  candidates=candidates, language=language, source=source,
                  kind=str((entry or {}).get("env", ""))), []


def validate_script_dir(folder: str | Path) -> list[SchemaError]:
    """Every problem of the script folder (empty when it is valid)."""
    return _parse(Path(folder))[1]


def load_script_dir(folder: str | Path) -> Script:
    script, errors = _parse(Path(folder))
    if errors:
        raise ScriptError(str(folder), errors)
    assert script is not None  # _parse gives a script whenever it finds no errors
    return script
