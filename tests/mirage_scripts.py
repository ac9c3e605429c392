"""MIRAGE's folder layout in miniature (English and Chinese file and stage names), as pytest fixtures `en` and `zh`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _fields(name, ability="", **extra):
    d = {f: f"{name} {f.lower()}." for f in ("Story", "Script", "Relationship", "Performance", "Purpose")}
    d["Ability"] = ability
    d.update(extra)
    return d


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def make_bride(root: Path) -> Path:
    """'Bride in Filial Dress' in miniature: single stage, empty abilities, a keyword memory map."""
    d = root / "Bride in Filial Dress"
    d.mkdir(parents=True)
    _dump(d / "script.json", {n: _fields(n) for n in ("Ling Yun", "Doctor Fang", "Junmeng Chen")})
    _dump(d / "clues.json", {"Woods": ["A torn veil."], "Memory of Junmeng Chen": {"veil": "You sewed that veil."}})
    return d


def make_fox(root: Path) -> Path:
    """'Fox Hotel' in miniature: a 'show' prologue, stage-2 names, a string note keyed by a stage-2 name part."""
    d = root / "Fox Hotel"
    d.mkdir(parents=True)
    s1 = {n: _fields(n, "You may lie." if n == "Nopperabo" else "") for n in ("Nopperabo", "Little Fox", "Sky Dog")}
    s2 = {"Ichiro Kiryu (Nopperabo)": {"Script": "You are Ichiro."}, "Xiao Nuan (Little Fox)": {"Story": "More."},
          "Zetong Hei (Sky Dog)": {"Script": "You are Zetong."}}
    _dump(d / "script.json", {"Stage 1": s1, "Stage 2": s2, "show": "Tonight's show begins."})
    _dump(d / "clues.json", {"Stage 1": {"Card Hall": ["Cards."]},
                             "Stage 2": {"Ichiro Kiryu (Nopperabo)": ["A mask."]}, "Xiao Nuan": "Your secret."})
    return d


def make_star(root: Path) -> Path:
    """'The Final Performance of a Big Star' in miniature: two detectives, candidates, public clues by stage."""
    d = root / "The Final Performance of a Big Star"
    d.mkdir(parents=True)
    _dump(d / "script.json", {f"Stage {k}": {n: _fields(n) if k == 1 else {"Script": f"stage {k}"}
                                              for n in ("Weiwen Han", "Manli Shen")} for k in range(1, 5)})
    _dump(d / "clues.json", {"Richard": ["Gloves."], "Public Clue 1": ["P1."], "Public Clue 2": ["P2."],
                             "Public Clue 3": ["P3."]})
    return d


@pytest.fixture
def en(tmp_path):
    root = tmp_path / "En"
    root.mkdir()
    for make in (make_bride, make_fox, make_star):
        make(root)
    _dump(root / "Truth.json", {"Bride in Filial Dress": "The doctor did it.", "Fox Hotel": "Nopperabo did it.",
                                "The Final Performance of a Big Star": "Richard did it."})
    return root


@pytest.fixture
def zh(tmp_path):
    """A Chinese script with MIRAGE's Chinese file and stage names (人物剧本.json, 线索.json, 第一幕)."""
    root = tmp_path / "Zh"
    d = root / "狐狸旅馆"
    d.mkdir(parents=True)
    s1 = {n: _fields(n) for n in ("滑头鬼", "小狐狸", "大天狗")}
    s2 = {"桐生一郎（滑头鬼）": {"Script": "更多。"}, "小暖（小狐狸）": {"Story": "更多。"}}
    _dump(d / "人物剧本.json", {"第一幕": s1, "第二幕": s2, "show": "序幕。"})
    _dump(d / "线索.json", {"第一幕": {"牌室": ["扑克牌。"]}, "第二幕": {"厨房": ["刀。"]}, "小暖": "秘密。"})
    _dump(root / "Truth.json", {"狐狸旅馆": "滑头鬼是凶手。"})
    return root
