"""How each kind of script is played: MIRAGE's per-script environments (ScriptEnvs/*.py in the benchmark's code) as
small declared rule sets, looked up by the script's environment class (`Script.kind`, from mirage_culprits.yaml).

The game loop (game.py) asks its rules at four points and never tests a script's name:

- `introductions(stage)`: whether the stage opens with self-introductions;
- `moves()`: the conversation moves a player may choose from (ask, investigate);
- `stage_clues(current, new)`: the searchable clues once a later stage begins (added to, or replacing, the old);
- `forced_investigation`: whether every player makes one investigation at the end of each stage (after the
  rounds), and `judge_npcs`: whether the suspects who are no players (the script's candidates) are judged for
  suspicion and trust after every act, instead of the speakers.

`score_last_stage` (judge.py) counts doubt and TII over the last stage only: MIRAGE's multi-stage environments reset
every character's doubt (and last action, and the round counter) when a stage begins, so the final ranking is the
last stage's.

Rules per MIRAGE environment (the class names of ScriptEnvs/):
- SOC, SOO, SUC, SUO (single stage), MOO, MUC (multi stage): introductions in the first stage only, ask or
  investigate, later stages add their clues to those left.
- MUO (Fox Hotel): introductions every stage; each stage's clues replace the last stage's.
- MOC (The Final Performance of a Big Star: two detectives, seven candidates): no introductions, ask only, one forced
  investigation per player at the end of each stage, the candidates judged after every act (doubt reset per stage).

The `stratagem` protocol (the small-model option) plays every script with `LEGACY`: introductions once, ask or
investigate, clues added, every stage scored.
"""

from __future__ import annotations

from dataclasses import dataclass

ASK, INVESTIGATE = "ask", "investigate"


@dataclass(frozen=True)
class ScriptRules:
    name: str = "default"
    intro_stages: str = "first"  # 'first' | 'every' | 'none'
    verbs: tuple[str, ...] = (ASK, INVESTIGATE)
    replace_clues: bool = False
    forced_investigation: bool = False
    judge_npcs: bool = False
    score_last_stage: bool = True

    def introductions(self, stage: int) -> bool:
        return self.intro_stages == "every" or (self.intro_stages == "first" and stage == 0)

    def moves(self) -> tuple[str, ...]:
        return self.verbs

    def stage_clues(self, current: dict[str, list[str]], new: dict[str, list[str]]) -> dict[str, list[str]]:
        if self.replace_clues:
            return {k: list(v) for k, v in new.items()}
        out = {k: list(v) for k, v in current.items()}
        for loc, clues in new.items():
            out.setdefault(loc, []).extend(clues)
        return out


DEFAULT = ScriptRules()
LEGACY = ScriptRules(name="stratagem", score_last_stage=False)
RULES: dict[str, ScriptRules] = {
    "MUO": ScriptRules(name="MUO", intro_stages="every", replace_clues=True),
    "MOC": ScriptRules(name="MOC", intro_stages="none", verbs=(ASK,), forced_investigation=True, judge_npcs=True),
}


def rules_for(kind: str, protocol: str) -> ScriptRules:
    """The rules of a script of MIRAGE environment class `kind` ('' for a script of our own) under `protocol`."""
    if protocol == "stratagem":
        return LEGACY
    return RULES.get(kind, DEFAULT)
