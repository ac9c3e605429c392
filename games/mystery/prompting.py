"""The mystery's prompt texts under the `mirage` protocol: one YAML file per language (prompts/en.yaml,
prompts/zh.yaml), the script's language choosing the file; a user's folder (`MysteryConfig.prompts_dir`, the
`--prompts DIR` flag) with files of the same names overrides key by key."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from string import Formatter
from typing import Any

import yaml

PROMPTS_DIR = Path(__file__).parent / "prompts"
LANGUAGES = {"En": "en", "Zh": "zh"}


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in Formatter().parse(text) if f}


@lru_cache(maxsize=16)
def load_prompts(language: str = "En", prompts_dir: str | None = None) -> dict[str, Any]:
    """The prompt table of a script language ('En' or 'Zh'); a file in `prompts_dir` replaces the keys it holds.
    A replaced template must use only the placeholders of the shipped one (else a ValueError naming the key), so a
    user's file fails at load, not mid-game."""
    stem = LANGUAGES.get(language, "en")
    table = yaml.safe_load((PROMPTS_DIR / f"{stem}.yaml").read_text(encoding="utf-8"))
    if prompts_dir:
        path = Path(prompts_dir).expanduser() / f"{stem}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"--prompts {prompts_dir}: no {path.name} (the {language} prompts) in it")
        own = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(own, dict):
            raise ValueError(f"{path}: expected a mapping of prompt names to texts")
        for key, text in own.items():
            if key not in table:
                raise ValueError(f"{path}: unknown prompt {key!r} (known: {', '.join(table)})")
            if isinstance(text, str) and not _fields(text) <= _fields(str(table[key])):
                raise ValueError(f"{path}: prompt {key!r} uses {sorted(_fields(text) - _fields(str(table[key])))}, "
                                 f"which it is not given (allowed: {sorted(_fields(str(table[key])))})")
            table[key] = {**table[key], **text} if isinstance(table[key], dict) and isinstance(text, dict) else text
    return table


def split_thought(text: str) -> tuple[str, str]:
    """(thought, response) of a 'THOUGHT: ... RESPONSE: ...' reply; a reply without the RESPONSE marker is all
    response (a small model often skips the thought)."""
    low = text.lower()
    i = low.rfind("response:")
    if i < 0:
        return "", text.strip()
    thought = text[:i]
    j = thought.lower().find("thought:")
    thought = thought[j + len("thought:"):] if j >= 0 else thought
    return thought.strip(), text[i + len("response:"):].strip()
