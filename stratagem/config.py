"""Typed configuration: nested dataclasses read from and written to plain dicts (YAML), checked against their type
hints and their fields' metadata, and turned into command-line flags.

A config class is a dataclass whose fields all have defaults and a `metadata={"help": ...}`; a field may also declare
`"min"`, `"max"` (inclusive bounds of a number, or of each number of a list) and `"choices"` (the allowed values, or
allowed elements of a list). Nested dataclass fields are sections. Every error is a `ConfigError` that starts with the
dotted path of the offending field, e.g. `ppo.clip_eps: must be >= 0, got -1`.

    cfg = from_dict(RunConfig, yaml.safe_load(text))     # unknown fields, wrong types, out-of-range values: errors
    to_dict(cfg)                                         # the inverse (plain dicts, lists, scalars)
    parser = flag_parser(RunConfig, aliases={"games": "loop.games"})   # --loop.games, --games, ... for every field
    overrides = parse_flags(parser, argv)                # {"loop": {"games": [...]}}, merged over the YAML's dict

After TRL's `TrlParser` and transformers' `HfArgumentParser`: a new field is a new flag and a new YAML key, with no
edit of the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "check", "flag_parser", "from_dict", "leaf_fields", "merge", "missing_help",
           "parse_flags", "to_dict"]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message starts with its path."""


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_parts(tp: Any) -> tuple[list[Any], bool]:
    """(the non-None members, whether None is allowed) of a Union / Optional; ([tp], False) for anything else."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = list(typing.get_args(tp))
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _section_type(tp: Any) -> type | None:
    """The dataclass of a nested section (also `Section | None`), else None."""
    members, _ = _optional_parts(tp)
    if len(members) == 1 and dataclasses.is_dataclass(members[0]) and isinstance(members[0], type):
        return members[0]
    return None


def describe(tp: Any) -> str:
    """A type in words, for error messages and flag help."""
    members, optional = _optional_parts(tp)
    if len(members) > 1 or optional:
        words = " or ".join(describe(m) for m in members)
        return f"{words} or null" if optional else words
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    return {str: "strings", int: "integers", float: "numbers", bool: "booleans"}.get(tp, describe(tp))


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce(tp: Any, value: Any, path: str, _shown: Any = None) -> Any:
    """`value` checked against the type hint `tp` (an int is accepted for a float and converted); a ConfigError
    naming `path` otherwise. Nested dataclasses are read with `from_dict`."""
    members, optional = _optional_parts(tp)
    if len(members) > 1 or optional:
        if value is None:
            if optional:
                return None
            raise ConfigError(f"{path}: expected {describe(tp)}, got None")
        if len(members) == 1:
            return coerce(members[0], value, path, _shown=tp)
        for m in members:
            try:
                return coerce(m, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {describe(tp)}, got {_got(value)}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                args = args[:1]
            items = [coerce(args[0], v, _join(path, i)) if args else v for i, v in enumerate(value)]
            return tuple(items) if origin is tuple or tp is tuple else items
    elif origin is dict or tp is dict:
        if isinstance(value, Mapping):
            if not args:
                return dict(value)
            return {coerce(args[0], k, _join(path, str(k))): coerce(args[1], v, _join(path, str(k)))
                    for k, v in value.items()}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            check(value, path)
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, path=path)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        return value  # a hint this module does not interpret
    raise ConfigError(f"{path}: expected {describe(_shown or tp)}, got {_got(value)}")


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else repr(x)


def check_range(f: dataclasses.Field, value: Any, path: str) -> None:
    """The field's metadata bounds ("min", "max") and "choices", applied to the value or to each element of a list
    value; None passes (an Optional field left unset)."""
    meta = f.metadata
    if value is None or not any(k in meta for k in ("min", "max", "choices")):
        return
    items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
    for i, v in items:
        p = path if i is None else _join(path, i)
        if "min" in meta and isinstance(v, (int, float)) and v < meta["min"]:
            raise ConfigError(f"{p}: must be >= {_num(meta['min'])}, got {_num(v)}")
        if "max" in meta and isinstance(v, (int, float)) and v > meta["max"]:
            raise ConfigError(f"{p}: must be <= {_num(meta['max'])}, got {_num(v)}")
        if "choices" in meta and v not in meta["choices"]:
            raise ConfigError(f"{p}: must be one of {', '.join(map(str, meta['choices']))}, got {v!r}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _unknown(path: str, key: Any, cls: type, names: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{_join(path, str(key))}: unknown field of {cls.__name__}{hint} (expected one of "
                       f"{', '.join(names)})")


def from_dict(cls: type, data: Mapping[str, Any] | None, *, path: str = "", base: Any = None) -> Any:
    """An instance of the dataclass `cls` from a (nested) dict: the fields given replace those of `base` (default:
    `cls()`, whose nested sections keep the defaults their parent declares). Unknown keys, wrong types and values
    outside the fields' "min" / "max" / "choices" raise a ConfigError naming the dotted path; a ValueError of the
    class's own `__post_init__` is re-raised naming the section."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, got {_got(data)}")
    fields, hints = _fields(cls), _hints(cls)
    base = cls() if base is None else base
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(path, key, cls, list(fields))
        p, tp = _join(path, key), hints[key]
        section = _section_type(tp)
        if section is not None and isinstance(value, Mapping):
            current = getattr(base, key)
            values[key] = from_dict(section, value, path=p, base=current if isinstance(current, section) else None)
        else:
            values[key] = coerce(tp, value, p)
            check_range(fields[key], values[key], p)
    try:
        return dataclasses.replace(base, **values)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """The config as plain nested dicts, lists and scalars (what `from_dict` reads back; YAML-safe)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(obj))


def check(obj: Any, path: str = "") -> None:
    """Check every field of a config already built (e.g. changed in code after `from_dict`): type and range, nested
    sections included."""
    hints = _hints(type(obj))
    for name, f in _fields(type(obj)).items():
        value, p = getattr(obj, name), _join(path, name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, p)
            continue
        coerce(hints[name], value, p)
        check_range(f, value, p)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, recursively for mappings (a list or scalar in `over` replaces the one in `base`)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def leaf_fields(cls: type, path: str = "", base: Any = None) -> Iterator[tuple[str, dataclasses.Field, Any, Any]]:
    """(dotted path, field, type hint, default) of every non-section field of `cls` and its sections."""
    base = cls() if base is None else base
    hints = _hints(cls)
    for name, f in _fields(cls).items():
        p, tp = _join(path, name), hints[name]
        section = _section_type(tp)
        if section is not None and isinstance(getattr(base, name), section):
            yield from leaf_fields(section, p, getattr(base, name))
        else:
            yield p, f, tp, getattr(base, name)


def missing_help(cls: type, path: str = "") -> list[str]:
    """Dotted paths of the fields of `cls` (sections included, recursively) without a non-empty help string."""
    out = []
    hints = _hints(cls)
    for name, f in _fields(cls).items():
        p = _join(path, name)
        if not str(f.metadata.get("help", "")).strip():
            out.append(p)
        section = _section_type(hints[name])
        if section is not None:
            out += missing_help(section, p)
    return out


# ---- command-line flags ---------------------------------------------------------------------------------------

_NONE = ("none", "null", "~")
_DEST = "config:"  # argparse dest prefix of the config fields


def parse_text(tp: Any, text: str) -> Any:
    """A flag's text as a value of type `tp`: numbers, true/false, comma-separated lists, YAML / JSON mappings,
    'none' for an Optional. Raises argparse.ArgumentTypeError (argparse prints it with the flag)."""
    members, optional = _optional_parts(tp)
    if optional and text.strip().lower() in _NONE:
        return None
    if len(members) > 1:
        for m in members:
            try:
                return parse_text(m, text)
            except argparse.ArgumentTypeError:
                continue
        raise argparse.ArgumentTypeError(f"expected {describe(tp)}, got {text!r}")
    tp = members[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if origin in (list, tuple) or tp in (list, tuple):
            item = args[0] if args else str
            if text.strip().startswith("["):  # a YAML / JSON list, for items with commas or escapes

                value = yaml.safe_load(text)
                if not isinstance(value, list):
                    raise ValueError
                return value
            return [parse_text(item, v.strip()) for v in text.split(",") if v.strip()]
        if origin is dict or tp is dict or tp is Any:
            value = yaml.safe_load(text)
            if (origin is dict or tp is dict) and not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected {describe(tp)}, got {text!r}") from None
    return text


def _metavar(tp: Any) -> str:
    members, _ = _optional_parts(tp)
    tp = members[0] if len(members) == 1 else str
    origin = typing.get_origin(tp)
    if origin in (list, tuple) or tp in (list, tuple):
        return "A,B"
    if origin is dict or tp is dict:
        return "YAML"
    return {bool: "BOOL", int: "INT", float: "FLOAT"}.get(tp, "TEXT")


def _flag_help(f: dataclasses.Field, tp: Any, default: Any) -> str:
    text = str(f.metadata.get("help", ""))
    members, _ = _optional_parts(tp)
    if any(typing.get_origin(m) in (list, tuple) for m in members):
        text += " Comma-separated."
    shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"{text} (default: {shown!r})".replace("%", "%%")


def flag_parser(cls: type, *, aliases: Mapping[str, str] | None = None, base: Any = None,
                **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser with a flag for every leaf field of `cls`: `--section.field` (also with dashes,
    `--loop.episodes-per-iteration`), plus `aliases` (`{"games": "loop.games"}` gives `--games`). Flags left out are
    absent from the result, so YAML values and defaults stay. Add command options (e.g. --out) to the parser before
    parsing; `parse_flags` returns the overrides as a nested dict. `parser_kwargs` go to ArgumentParser."""
    parser = argparse.ArgumentParser(allow_abbrev=False, **parser_kwargs)
    by_path = {p: (f, tp, d) for p, f, tp, d in leaf_fields(cls, base=base)}
    short: dict[str, list[str]] = {}
    for name, target in (aliases or {}).items():
        if target not in by_path:
            raise ValueError(f"alias --{name}: {target!r} is not a field of {cls.__name__}")
        short.setdefault(target, []).append(name)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for p, (f, tp, default) in by_path.items():
        section = p.rpartition(".")[0]
        group = groups.get(section)
        if group is None:
            group = groups[section] = parser.add_argument_group(section or "options")
        names = [p] + short.get(p, [])
        shown = [f"--{n.replace('_', '-')}" for n in names]
        hidden = [f"--{n}" for n in names if f"--{n}" not in shown]  # the underscore spellings work too
        convert = _converter(tp)
        members, _ = _optional_parts(tp)
        kw: dict[str, Any] = dict(dest=_DEST + p, type=convert, default=argparse.SUPPRESS, metavar=_metavar(tp))
        if members == [bool]:
            kw.update(nargs="?", const=True)
        group.add_argument(*shown, help=_flag_help(f, tp, default), **kw)
        if hidden:
            group.add_argument(*hidden, help=argparse.SUPPRESS, **kw)
    return parser


def _converter(tp: Any) -> Callable[[str], Any]:
    """The argparse `type=` of a flag of type `tp`."""
    return lambda text: parse_text(tp, text)


def parse_flags(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[dict[str, Any], argparse.Namespace]:
    """(the config overrides as a nested dict, the namespace of the other options, e.g. `out`) of `argv`."""
    ns = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for dest, value in list(vars(ns).items()):
        if not dest.startswith(_DEST):
            continue
        delattr(ns, dest)
        *sections, name = dest[len(_DEST):].split(".")
        d = overrides
        for s in sections:
            d = d.setdefault(s, {})
        d[name] = value
    return overrides, ns
