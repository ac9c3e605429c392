"""The murder-mystery rules without any model: the state, whose act comes next, what each character sees, how a
reply is parsed into an action and applied.

Flow (MIRAGE's): every character gets a summary of their own script -> self-introductions in speaking order ->
per stage, `rounds` conversation rounds in which each character either asks another character a question (the target
answers next) or investigates a location (the first remaining clue there is revealed publicly and removed; an emptied
location disappears) -> every character votes -> the judge scores and ranks (see judge.py, metrics.py).
Multi-stage scripts add each stage's script text (privately, to each character's summary) and clues (publicly) when
the stage begins.

A reply that does not parse into a valid action with a known target is a failed action: it is recorded as a Turn with
`illegal_reason` and the penalty as its reward, the character is asked again with the reason (at most `max_reasks`
times), then the turn passes (an unanswered question gets no answer, a failed vote is an abstention).

Budgets are counted in words (whitespace-separated; SmolLM2's tokenizer gives about 1.3 tokens per English word),
which keeps the summaries deterministic and independent of any tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

from stratagem.games.core import Observation, Reply, Turn
from stratagem.games.mystery.prompting import load_prompts, split_thought
from stratagem.games.mystery.rules import ScriptRules, rules_for
from stratagem.games.mystery.schema import Script

GAME = "mystery"
CULPRIT, CIVILIAN = "culprit", "civilian"
INTRODUCTION, CONVERSE, ASK, INVESTIGATE, ANSWER, VOTE, JUDGE = (
    "introduction", "converse", "ask", "investigate", "answer", "vote", "judge")
SELECT = "select"  # a forced investigation at the end of a stage (rules.ScriptRules.forced_investigation)

# Share of the summary budget per script field, in the order they are shown: what a character may do and wants
# comes first, so a tight budget cuts background before it cuts the rules of play.
SUMMARY_SHARES = {"Ability": 0.1, "Purpose": 0.1, "Script": 0.35, "Relationship": 0.15, "Performance": 0.1,
                  "Story": 0.1}
STAGE_SHARE = 0.3  # of the summary budget, for the text a later stage adds


@dataclass
class MysteryConfig:
    rounds: int = field(default=5, metadata={"help": "Conversation rounds per stage (each character acts once a round)."})
    max_reasks: int = field(default=1, metadata={"help": "Times a character is asked again after a failed action before the turn passes."})
    failed_action_penalty: float = field(default=-1.0, metadata={"help": "Reward recorded on the Turn of a failed action."})
    vote_weight: float | None = field(default=None, metadata={"help": "N in doubt = suspicion - trust + N x votes; None: the number of characters (MIRAGE)."})
    summary_tokens: int | None = field(default=None, metadata={"help": "Token budget of each character's script summary written by the served model before play (MIRAGE: 1500), counted with the tokenizer of `tokenizer`; cached per script, model and budget. None: clip each field to summary_words instead (no model call)."})
    tokenizer: str = field(default="default", metadata={"help": "Model (registered name or directory) whose tokenizer counts summary_tokens and whose context bounds every request."})
    summary_words: int = field(default=160, metadata={"help": "Word budget of a character's script summary in the prompt."})
    history_words: int = field(default=220, metadata={"help": "Word budget of the public history in the prompt; older entries are summarised past it."})
    history_entry_words: int = field(default=10, metadata={"help": "Words an older history entry keeps once the budget is exceeded."})
    shuffle_order: bool = field(default=True, metadata={"help": "Shuffle the speaking order with the episode seed (else script order)."})
    response_prefix: str = field(default="", metadata={"help": "Forced start of every conversation reply (e.g. 'Ask'); parsed as part of the reply."})
    structured_outputs: bool = field(default=True, metadata={"help": "Request conversation moves, votes and judge scores with a JSON schema of the legal choices (vLLM structured outputs); endpoints that reject it fall back to plain text, parsed leniently."})
    player_max_tokens: int = field(default=64, metadata={"help": "Max new tokens per player act."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature of the judge (0: its most likely scores; players sample at the agent's own temperature)."})
    judge_max_tokens: int = field(default=64, metadata={"help": "Max new tokens per judge call."})
    judge_context_words: int = field(default=80, metadata={"help": "Words of preceding public history the judge sees with an utterance."})
    judge_concurrency: int = field(default=4, metadata={"help": "Judge calls in flight at once per game."})
    human_seats: list[str] = field(default_factory=list, metadata={"help": "Characters played by a human through a LangGraph interrupt."})
    win_return: float = field(default=1.0, metadata={"help": "Outcome reward of every seat of the winning faction (the losers get minus this), credited to the seat's last turn."})
    protocol: str = field(default="stratagem", metadata={"help": "'mirage': MIRAGE's game and judges (the whole script up to full_script_tokens, the full history summarised past history_tokens, the own last action, THOUGHT / RESPONSE replies, the per-script rules of rules.py, suspicion and trust judged by the model of the speaker's side, ICI and SCI by an evaluation model that sees the truth); 'stratagem': the compact prompts and the single judge sized for small models. MysteryConfig.mirage() gives MIRAGE's settings.", "choices": ("stratagem", "mirage")})
    full_script_tokens: int = field(default=3000, metadata={"help": "mirage: a character's whole script is shown while it fits this many tokens (MIRAGE: 2 x its 1,500-token summary budget), else its summary."})
    history_tokens: int = field(default=1500, metadata={"help": "mirage: the public history is summarised by the summary model once it passes this many tokens (MIRAGE: 1,500)."})
    player_temperature: float | None = field(default=None, metadata={"help": "Sampling temperature of the players (None: the agent's own; MIRAGE: 0.8)."})
    prompts_dir: str | None = field(default=None, metadata={"help": "mirage: a folder of prompt files (en.yaml, zh.yaml) that replace the shipped prompts key by key (prompting.py)."})

    @classmethod
    def mirage(cls, **overrides: Any) -> MysteryConfig:
        """MIRAGE's game settings (its config.py, api.py and ScriptEnvs; stratagem/presets/mirage.reference.yaml
        cites each): 5 rounds per stage, the file's speaking order, every request sampled at 0.8 (players, judges,
        evaluator), scripts summarised to 1,500 tokens past 3,000, the history past 1,500. Re-asks
        are bounded at 3 where MIRAGE retries without limit (every failure is counted either way); replies get 512
        tokens for the THOUGHT and the RESPONSE. `overrides` change any field (a CPU run lowers `rounds`)."""
        base: dict[str, Any] = dict(protocol="mirage", rounds=5, shuffle_order=False, player_temperature=0.8,
                                    summary_tokens=1500, max_reasks=3, player_max_tokens=512,
                                    judge_max_tokens=256, judge_temperature=0.8)
        return cls(**{**base, **overrides})

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.max_reasks < 0:
            raise ValueError(f"rounds and max_reasks must be >= 0, got {self.rounds}, {self.max_reasks}")
        if self.summary_words < 10 or self.history_words < 10:
            raise ValueError("summary_words and history_words must be at least 10")
        if self.protocol not in ("stratagem", "mirage"):
            raise ValueError(f"protocol must be 'stratagem' or 'mirage', got {self.protocol!r}")


def words(text: str) -> list[str]:
    return text.split()


def clip(text: str, n: int) -> str:
    w = words(text)
    return text.strip() if len(w) <= n else " ".join(w[:n]) + " ..."


def summarise_history(entries: list[str], budget: int, entry_words: int) -> str:
    """The public history within `budget` words, deterministically: the newest entries are kept whole while they fit;
    older ones are shortened to their first `entry_words` words while those fit; the rest is replaced by a count
    ("(N earlier entries omitted)"). Order is preserved."""
    kept: list[str] = []
    used = 0
    i = len(entries) - 1
    while i >= 0 and used + len(words(entries[i])) <= budget:
        kept.append(entries[i])
        used += len(words(entries[i]))
        i -= 1
    while i >= 0:
        short = clip(entries[i], entry_words)
        if used + len(words(short)) > budget:
            break
        kept.append(short)
        used += len(words(short))
        i -= 1
    out = list(reversed(kept))
    if i >= 0:
        out.insert(0, f"({i + 1} earlier entries omitted)")
    return "\n".join(out) if out else "(nothing yet)"


def character_summary(script: Script, name: str, stage: int, budget: int) -> str:
    """A character's own script, compacted to about `budget` words: each field clipped to its share
    (SUMMARY_SHARES) of stage 1's text, plus the text later stages up to `stage` add, clipped to STAGE_SHARE."""
    first = script.stages[0].characters[name]
    lines = [f"{f}: {clip(first[f], max(3, int(budget * s)))}" for f, s in SUMMARY_SHARES.items() if first.get(f)]
    if name in script.notes:
        lines.append(f"Note: {clip(script.notes[name], max(3, int(budget * 0.1)))}")
    later = " ".join(t for st in script.stages[1: stage + 1] for t in st.characters.get(name, {}).values() if t)
    if later:
        lines.append(f"New in this stage: {clip(later, max(3, int(budget * STAGE_SHARE)))}")
    return "\n".join(lines)


# ---- parsing ------------------------------------------------------------------------------------------------------
_DECOR = re.compile(r"[*_`#\[\]【】<>]")


def _clean(text: str) -> str:
    return _DECOR.sub(" ", text)


Aliases = dict[str, list[str]]  # name -> other names it goes by (a later stage's name, ...)


def _aliases(names: list[str], other: Aliases | None = None) -> list[tuple[str, str]]:
    """(alias, name) pairs, longest alias first: every full name and its other names, and a first word that belongs
    to one name only."""
    out = [(n.lower(), n) for n in names]
    out += [(a.lower(), n) for n in names for a in (other or {}).get(n, [])]
    first: dict[str, list[str]] = {}
    for n in names:
        first.setdefault(n.split()[0].lower(), []).append(n)
    out += [(a, ns[0]) for a, ns in first.items() if len(ns) == 1 and a != ns[0].lower()]
    return sorted(out, key=lambda p: -len(p[0]))


def _word_end(low: str, end: int) -> bool:
    return end == len(low) or not (low[end].isascii() and low[end].isalnum())


def match_name_at(text: str, names: list[str], other: Aliases | None = None) -> tuple[str | None, int]:
    """The known name `text` starts with (case-insensitive, an optional leading 'the '), and where it ends."""
    low = text.lower()
    skip = 4 if low.startswith("the ") else 0
    for alias, name in _aliases(names, other):
        for s in ({0, skip}):
            end = s + len(alias)
            if low.startswith(alias, s) and _word_end(low, end):
                return name, end
    return None, 0


def find_first_name(text: str, names: list[str], other: Aliases | None = None) -> str | None:
    """The known name mentioned first in `text` (whole words, case-insensitive)."""
    best: tuple[int, int, str] | None = None
    low = text.lower()
    for alias, name in _aliases(names, other):
        for m in re.finditer(r"(?<![a-z0-9])" + re.escape(alias) + r"(?![a-z0-9])", low):
            key = (m.start(), -len(alias), name)
            best = key if best is None or key < best else best
            break
    return best[2] if best else None


_JSON_FIELD = re.compile(r'"(move|question|action|target|content)"\s*:\s*"((?:[^"\\]|\\.)*)', re.DOTALL)


def json_move(text: str) -> str | None:
    """A conversation move written as JSON, as structured outputs produce it ({"move": "Ask NAME", "question":
    TEXT} or {"move": "Investigate PLACE"}; also {"action": ..., "target": ..., "content": ...}), also when cut
    short at max_tokens, as the plain line 'Ask NAME: QUESTION' or 'Investigate PLACE'; None when the text holds no
    JSON move."""
    if "{" not in text:
        return None
    fields: dict[str, str] = {}
    for k, v in _JSON_FIELD.findall(text):
        if k not in fields:
            try:
                fields[k] = json.loads(f'"{v}"')
            except json.JSONDecodeError:
                fields[k] = v
    if "move" in fields:
        move = fields["move"].strip()
        if move.lower().startswith(("inv", "调查")):
            return move
        return f"{move}: {fields.get('question', '')}"
    if "action" not in fields:
        return None
    target = fields.get("target", "")
    if fields["action"].strip().lower().startswith(("inv", "调查")):
        return f"Investigate {target}"
    return f"Ask {target}: {fields.get('content', '')}"


_ACTION = re.compile(r"\b(ask|investigate)\b|(询问|调查)", re.IGNORECASE)
_VERBS = {"询问": "ask", "调查": "investigate"}


def parse_converse(text: str, me: str, characters: list[str], locations: list[str],
                   aliases: Aliases | None = None,
                   verbs: tuple[str, ...] = (ASK, INVESTIGATE)) -> tuple[dict | None, str | None]:
    """Parse a conversation reply. Rule: the first word 'Ask' or 'Investigate' (any case, markdown and brackets
    ignored) must be followed by a known target: a character other than oneself (full name, any name they go by in
    a stage, or a first name no one else has) and then the question, or a location that still has clues. A JSON
    move (structured outputs, see json_move) is read as the line it stands for. Returns (action, None) or
    (None, reason)."""
    t = _clean(json_move(text) or text)
    m = _ACTION.search(t)
    if not m:
        return None, "no action: expected 'Ask NAME: QUESTION' or 'Investigate PLACE'"
    verb = (m.group(1) or _VERBS[m.group(2)]).lower()
    if verb not in verbs:
        return None, f"this move is not allowed here: only {' or '.join(v.capitalize() for v in verbs)}"
    rest = t[m.end():].lstrip(" \t:,-\"'：，")
    if verb == "ask":
        others = [c for c in characters if c != me]
        target, end = match_name_at(rest, others, aliases)
        if target is None:
            if match_name_at(rest, [me], aliases)[0]:
                return None, "a character cannot ask themselves"
            return None, f"Ask needs a character ({', '.join(others)}), got {clip(rest, 4)!r}"
        question = rest[end:].strip().lstrip(":,-?!. \"'：，").strip().strip("\"'")
        if not question:
            return None, "Ask without a question"
        return {"kind": ASK, "target": target, "question": question}, None
    loc, end = match_name_at(rest, locations)
    if loc is None:
        where = ", ".join(locations) if locations else "none left"
        return None, f"Investigate needs a place with clues ({where}), got {clip(rest, 4)!r}"
    speech = rest[end:].strip().lstrip(":,-. \"'：，").strip()
    return {"kind": INVESTIGATE, "location": loc, **({"speech": speech} if speech else {})}, None


def parse_vote(text: str, me: str, characters: list[str], aliases: Aliases | None = None) -> tuple[str | None, str | None]:
    """A vote is the first other suspect (`characters`: the characters, or the script's candidates) named in the
    reply."""
    target = find_first_name(_clean(text), [c for c in characters if c != me], aliases)
    return (target, None) if target else (None, "the vote names no other character")


def _thought_and_response(text: str) -> tuple[str, str]:
    """mirage: the THOUGHT and the RESPONSE of a reply, plain ('THOUGHT: ... RESPONSE: ...') or as structured
    outputs write it ({"thought": ..., then the move fields}: the JSON stays the response, json_move reads it)."""
    m = re.search(r'"thought"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    if m and "{" in text:
        try:
            return json.loads(f'"{m.group(1)}"'), text
        except json.JSONDecodeError:
            return m.group(1), text
    return split_thought(text)


def _vote_field(text: str) -> str | None:
    """The "vote" of a structured vote reply (so a name in its thought is not taken for the vote)."""
    m = re.search(r'"vote"\s*:\s*"([^"]*)"', text)
    return m.group(1) if m else None


# ---- state --------------------------------------------------------------------------------------------------------
@dataclass
class MysteryState:
    """Everything that changes during a game; plain data so that a LangGraph checkpointer can store it."""

    script_path: str
    seed: int
    order: list[str]
    clues: dict[str, list[str]]
    stage: int = 0
    round: int = 0
    phase: str = INTRODUCTION
    cursor: int = 0
    attempts: int = 0
    question: dict[str, str] | None = None
    revealed: list[dict[str, Any]] = field(default_factory=list)
    public: list[str] = field(default_factory=list)
    votes: dict[str, str] = field(default_factory=dict)
    turns: list[dict[str, Any]] = field(default_factory=list)
    memories: dict[str, list[str]] = field(default_factory=dict)  # character -> keywords whose memory came back
    summaries: dict[str, list[str]] = field(default_factory=dict)  # character -> per-stage model summary (summary.py)
    # mirage protocol
    last_action: dict[str, str] = field(default_factory=dict)  # character -> their last reply and what came of it
    history_summaries: list[list[Any]] = field(default_factory=list)  # [public entries it covers, summary text]
    summary_failures: int = 0  # history summaries that came back empty (the history then stays whole)
    acts_done: list[dict[str, int]] = field(default_factory=list)  # {stage, seen} after each completed act
    history_checked: int = 0  # public entries when the history was last summarised (or a summary came back empty)
    verdict: dict[str, Any] | None = None  # the judges' scores once the game is judged (mystery.py): it is over

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MysteryState:
        return cls(**d)


class MysteryGame:
    """Rules over a `MysteryState` (mutated in place)."""

    def __init__(self, script: Script, state: MysteryState, config: MysteryConfig):
        self.script, self.state, self.config = script, state, config
        self.rules: ScriptRules = rules_for(script.kind, config.protocol)
        self.mirage = config.protocol == "mirage"
        self.prompts = load_prompts(script.language, config.prompts_dir) if self.mirage else {}

    @classmethod
    def new(cls, script: Script, seed: int, config: MysteryConfig,
            summaries: dict[str, list[str]] | None = None) -> MysteryGame:
        order = list(script.characters)
        if config.shuffle_order:
            random.Random(seed).shuffle(order)
        st = MysteryState(script_path=script.path, seed=seed, order=order,
                          clues={k: list(v) for k, v in script.stages[0].clues.items()},
                          summaries=dict(summaries or {}))
        game = cls(script, st, config)
        game._say(f"[Case] {script.title}. {script.description}".strip())
        if not game.rules.introductions(0):
            game._start_stage(0)
        return game

    def _say(self, text: str) -> None:
        """Add to the public history, then hand out every keyword memory whose keyword it now mentions (MIRAGE's
        rule for memories: the owner recalls one when its keyword comes up in the conversation)."""
        st = self.state
        st.public.append(text)
        for owner, mem in self.script.memories.items():
            got = st.memories.setdefault(owner, [])
            got += [k for k in mem if k not in got and k in text]

    def shown(self, name: str) -> str:
        """The name a character goes by in the current stage."""
        return self.script.shown_name(name, self.state.stage)

    def aliases(self) -> Aliases:
        return self.script.aliases()

    def summary(self, name: str) -> str:
        """The character's script as the prompt shows it: the model's summary for this stage when prepared
        (summary.py), else each field clipped to its word share (character_summary)."""
        st = self.state
        if name in st.summaries:
            return st.summaries[name][min(st.stage, len(st.summaries[name]) - 1)]
        if self.mirage:
            return self.character_sheet(name)
        return character_summary(self.script, name, st.stage, self.config.summary_words)

    def character_sheet(self, name: str, stage: int | None = None) -> str:
        """mirage: the character's six-part script with every stage up to `stage` (default: the current one)."""
        up = self.state.stage if stage is None else stage
        f = {k.lower(): self.script.field_text(name, k, up) or "-" for k in
             ("Story", "Script", "Relationship", "Performance", "Purpose", "Ability")}
        return self.prompts["character_sheet"].format(**f)

    def personal_clues(self, name: str) -> str:
        """A character's private note and the memories that came back to them (MIRAGE's `self_clues`)."""
        parts = [self.script.notes[name]] if name in self.script.notes else []
        parts += [f"{k}: {self.script.memories[name][k]}" for k in self.state.memories.get(name, [])]
        return "\n".join(parts)

    def history_text(self, upto: int | None = None) -> str:
        """mirage: the public history up to entry `upto` as the players saw it then: the latest summary written
        before that point, then the entries since."""
        st = self.state
        end = len(st.public) if upto is None else upto
        start, head = 0, ""
        for covered, text in st.history_summaries:
            if covered <= end:
                start, head = covered, text
        lines = ([head] if head else []) + st.public[start:end]
        return "\n".join(lines) if lines else self.prompts.get("no_history", "(nothing yet)")

    def add_history_summary(self, text: str) -> None:
        """Record a summary of the history so far (graph.py asks the summary model once history_text passes
        config.history_tokens); an empty one is counted and the history stays whole."""
        if text.strip():
            self.state.history_summaries.append([len(self.state.public), text.strip()])
        else:
            self.state.summary_failures += 1
        self.state.history_checked = len(self.state.public)

    def suspects(self, voter: str) -> list[str]:
        return [c for c in self.script.suspects if c != voter]

    # -- who and what ------------------------------------------------------------------------------------------
    def faction(self, name: str) -> str:
        return CULPRIT if name in self.script.culprits else CIVILIAN

    def seat(self, name: str) -> int:
        return self.script.characters.index(name)

    def actor(self) -> str | None:
        st = self.state
        if st.phase == ANSWER:
            return self.question()["target"]
        if st.phase in (INTRODUCTION, CONVERSE, SELECT, VOTE):
            return st.order[st.cursor]
        return None

    def acting(self) -> str:
        """The character to act now; ValueError in a phase where no one acts."""
        name = self.actor()
        if name is None:
            raise ValueError(f"{GAME}: no character acts in phase {self.state.phase!r}")
        return name

    def question(self) -> dict[str, str]:
        """The question waiting for an answer (the ANSWER phase): asker, target, question."""
        q = self.state.question
        if q is None:
            raise ValueError(f"{GAME}: no question is waiting for an answer in phase {self.state.phase!r}")
        return q

    def verbs(self) -> tuple[str, ...]:
        return (INVESTIGATE,) if self.state.phase == SELECT else self.rules.moves()

    def locations(self) -> list[str]:
        return [k for k, v in self.state.clues.items() if v]

    def legal_actions(self, name: str) -> list[str]:
        st = self.state
        others = [self.shown(c) for c in st.order if c != name]
        if st.phase in (CONVERSE, SELECT):
            verbs = self.verbs()
            return ([f"Ask {c}: QUESTION" for c in others] if ASK in verbs else []) + \
                ([f"Investigate {loc}" for loc in self.locations()] if INVESTIGATE in verbs else [])
        if st.phase == VOTE:
            return self.suspects(name)
        return []

    def instruction(self, name: str) -> str:
        st = self.state
        others = ", ".join(self.shown(c) for c in st.order if c != name)
        if st.phase == INTRODUCTION:
            return f"Introduce yourself to the others as {self.shown(name)} in two or three sentences."
        if st.phase == CONVERSE:
            places = ", ".join(self.locations()) or "none"
            stage = f"stage {st.stage + 1}, " if self.script.multi_stage else ""
            return (f"Your move ({stage}round {st.round + 1}). Ask one character a question, or investigate one place.\n"
                    f"Characters: {others}\nPlaces: {places}\n"
                    "Reply with one line: 'Ask NAME: QUESTION' or 'Investigate PLACE'.")
        if st.phase == ANSWER:
            q = self.question()
            return (f"{self.shown(q['asker'])} asks you: {q['question']}\nAnswer as {self.shown(name)} in one to "
                    "three sentences.")
        return f"Vote for the murderer. Reply with one name: {', '.join(self.suspects(name))}."

    def mirage_prompt(self, name: str) -> tuple[str, str]:
        """mirage: (instruction, what goes after RESPONSE) of the current act, in the script's language."""
        st, P = self.state, self.prompts
        others = ", ".join(self.shown(c) for c in st.order if c != name)
        places = ", ".join(self.locations()) or P["no_clues"]
        where = (P["stage_round"].format(stage=st.stage + 1, round=st.round + 1) if self.script.multi_stage
                 else P["round_only"].format(round=st.round + 1))
        if st.phase == INTRODUCTION:
            return P["introduction"].format(name=self.shown(name)), P["introduction_response"]
        if st.phase == ANSWER:
            q = self.question()
            return P["answer"].format(asker=self.shown(q["asker"]), question=q["question"]), P["answer_response"]
        if st.phase == SELECT:
            return P["select"].format(places=places), P["select_response"]
        if st.phase == CONVERSE and INVESTIGATE not in self.verbs():
            return (P["converse_ask_only"].format(stage_round=where, characters=others),
                    P["converse_ask_only_response"])
        if st.phase == CONVERSE:
            return P["converse"].format(stage_round=where, characters=others, places=places), P["converse_response"]
        return P["vote"].format(suspects=", ".join(self.suspects(name))), P["vote_response"]

    def mirage_observation(self, name: str, retry_reason: str | None) -> Observation:
        """MIRAGE's player context: the whole script (or its summary), personal clues, the full history (summarised
        past history_tokens), the own last action, a THOUGHT / RESPONSE reply."""
        st, P = self.state, self.prompts
        system = P["player_system"].format(name=self.shown(name), title=self.script.title,
                                           description=self.script.description, script=self.summary(name),
                                           clues=self.personal_clues(name) or P["no_clues"])
        instruction, response = self.mirage_prompt(name)
        user = (P["context"].format(history=self.history_text(), last_action=st.last_action.get(name)
                                    or P["no_action"])
                + f"\n\n{instruction}\n\n" + P["reply_format"].format(response=response))
        if retry_reason:
            user += "\n" + P["retry"].format(reason=retry_reason)
        return Observation(game=GAME, seat=self.seat(name), role=name, phase=st.phase,
                           messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                           legal_actions=self.legal_actions(name), private={"thought": True})

    def observation(self, retry_reason: str | None = None) -> Observation:
        name = self.acting()
        st, cfg = self.state, self.config
        if self.mirage:
            return self.mirage_observation(name, retry_reason)
        recalled = "".join(f"\nYou remember ({k}): {self.script.memories[name][k]}" for k in st.memories.get(name, []))
        system = (f"You are {self.shown(name)} in a murder mystery game: {self.script.title}. "
                  f"{self.script.description}\n"
                  f"Your character:\n{self.summary(name)}{recalled}\n"
                  "Stay in character and keep replies short.")
        user = (f"What happened so far:\n{summarise_history(st.public, cfg.history_words, cfg.history_entry_words)}"
                f"\n\n{self.instruction(name)}")
        if retry_reason:
            user += f"\nYour last reply was not accepted ({retry_reason}). Try again."
        return Observation(game=GAME, seat=self.seat(name), role=name, phase=st.phase,
                           messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                           legal_actions=self.legal_actions(name),
                           response_prefix=cfg.response_prefix if st.phase == CONVERSE else "")

    def retry_reason(self) -> str | None:
        """The reason of the previous failed attempt at the current act, shown when asking again."""
        if self.state.attempts and self.state.turns:
            return self.state.turns[-1].get("illegal_reason")
        return None

    # -- applying a reply --------------------------------------------------------------------------------------
    def apply(self, obs: Observation, reply: Reply, adapter: str | None = None) -> Turn:
        """Record the reply as a Turn and advance the game."""
        st, name = self.state, self.acting()
        text = reply.action if reply.action is not None else obs.response_prefix + (reply.text or "")
        info: dict[str, Any] = {"stage": st.stage, "round": st.round, "attempt": st.attempts, "seen": len(st.public)}
        if self.mirage and reply.action is None:
            thought, text = _thought_and_response(text)
            info["thought"] = thought
        if reply.finish_reason is not None:
            info["finish_reason"] = reply.finish_reason  # 'length': cut at max_tokens (still parsed as given)
        action = reason = None
        phase = st.phase
        if st.phase in (INTRODUCTION, ANSWER):
            if text.strip():
                action = "Introduce" if st.phase == INTRODUCTION else "Answer"
            else:
                reason = "empty reply"
            if st.phase == ANSWER:
                info["asker"] = self.question()["asker"]
        elif st.phase in (CONVERSE, SELECT):
            parsed, reason = parse_converse(text, name, st.order, self.locations(), self.aliases(), self.verbs())
            if parsed:
                phase = parsed["kind"]
                if phase == ASK:
                    action = f"Ask {parsed['target']}: {parsed['question']}"
                    info.update(target=parsed["target"], question=parsed["question"])
                else:
                    action = f"Investigate {parsed['location']}"
                    info.update(location=parsed["location"], speech=parsed.get("speech", ""),
                                forced=st.phase == SELECT)
        else:
            target, reason = parse_vote(_vote_field(text) or text, name, self.script.suspects, self.aliases())
            if target:
                action = f"Vote {target}"
                info["target"] = target
        if self.mirage:
            info["said"] = text.strip()  # the RESPONSE part: what the judges read
        turn = Turn.from_reply(reply, seat=self.seat(name), role=name, phase=phase, messages=obs.messages,
                               response=reply.text or "", action=action, illegal_reason=reason,
                               reward=self.config.failed_action_penalty if reason else 0.0,
                               faction=self.faction(name), info=info)
        if adapter:
            turn.adapter = adapter
        if reason is None:
            self._succeed(name, turn, text)
        elif st.attempts < self.config.max_reasks:
            st.attempts += 1
        else:
            self._give_up(name, turn)
        st.turns.append(dataclasses.asdict(turn))
        return turn

    def _succeed(self, name: str, turn: Turn, text: str) -> None:
        st = self.state
        if st.phase == INTRODUCTION:
            self._say(f"{self.shown(name)} (introduction): {text.strip()}")
            self._remember(name, turn, text)
            self._done_act()
            self._next_introduction()
        elif st.phase == ANSWER:
            asker = self.question()["asker"]
            self._say(f"{self.shown(name)} answers {self.shown(asker)}: {text.strip()}")
            if self.mirage:
                st.last_action[asker] = f"{st.last_action.get(asker, '')}\n{self.shown(name)}: {text.strip()}"
            st.question = None
            st.phase = CONVERSE
            self._done_act()
            self._next_conversation_turn()
        elif st.phase == CONVERSE and turn.phase == ASK:
            self._say(f"{self.shown(name)} asks {self.shown(turn.info['target'])}: {turn.info['question']}")
            self._remember(name, turn, text)
            st.question = {"asker": name, "target": turn.info["target"], "question": turn.info["question"]}
            st.phase, st.attempts = ANSWER, 0
        elif st.phase in (CONVERSE, SELECT):
            loc = turn.info["location"]
            # MIRAGE draws a random clue of the place; seeded by game and draw so a replay reveals the same
            k = random.Random(st.seed * 100_003 + len(st.revealed)).randrange(len(st.clues[loc])) if self.mirage else 0
            clue = st.clues[loc].pop(k)
            if not st.clues[loc]:
                del st.clues[loc]
            turn.info["clue"] = clue
            st.revealed.append({"stage": st.stage, "round": st.round, "by": name, "location": loc, "clue": clue})
            speech = f" ({turn.info['speech']})" if self.mirage and turn.info.get("speech") else ""
            self._say(f"[Clue] {self.shown(name)} investigates {loc}{speech}: {clue}")
            self._remember(name, turn, text, outcome=f"[Clue][{loc}]: {clue}")
            self._done_act()
            if st.phase == SELECT:
                self._next_select()
            else:
                self._next_conversation_turn()
        else:
            st.votes[name] = turn.info["target"]
            self._next_vote()

    def _give_up(self, name: str, turn: Turn) -> None:
        st = self.state
        turn.info["passed"] = True
        if st.phase == INTRODUCTION:
            self._say(f"{self.shown(name)} (introduction): (says nothing)")
            self._next_introduction()
        elif st.phase == ANSWER:
            self._say(f"{self.shown(name)} does not answer {self.shown(self.question()['asker'])}.")
            st.question, st.phase = None, CONVERSE
            self._next_conversation_turn()
        elif st.phase == CONVERSE:
            self._say(f"{self.shown(name)} does nothing this round.")
            self._next_conversation_turn()
        elif st.phase == SELECT:
            self._next_select()
        else:
            self._next_vote()

    def _remember(self, name: str, turn: Turn, text: str, outcome: str = "") -> None:
        """mirage: the character's own last act and its outcome, shown to them at their next act."""
        if self.mirage:
            thought = turn.info.get("thought", "")
            self.state.last_action[name] = "\n".join(x for x in (thought and f"THOUGHT: {thought}",
                                                                   f"RESPONSE: {text.strip()}", outcome) if x)

    def _done_act(self) -> None:
        """A completed act (an answered question counts once): the points where NPC suspects are judged."""
        self.state.acts_done.append({"stage": self.state.stage, "seen": len(self.state.public)})

    def _next_introduction(self) -> None:
        st = self.state
        st.cursor, st.attempts = st.cursor + 1, 0
        if st.cursor == len(st.order):
            st.cursor = 0
            self._begin_rounds()

    def _next_stage(self, stage: int) -> None:
        """Open a later stage: its clues (rules.stage_clues), its announcement, then introductions if the rules
        want them, else the rounds. MIRAGE's multi-stage environments also forget every last action here."""
        st = self.state
        st.stage, st.round, st.cursor = stage, 0, 0
        new = self.script.stages[stage].clues
        st.clues = self.rules.stage_clues(st.clues, new)
        if self.rules.score_last_stage:
            st.last_action = {}
        where = ", ".join(new) or "no new places"
        self._say(f"[Stage {stage + 1}] The story moves on; each of you learns more. New clues at: {where}.")
        if self.rules.introductions(stage):
            st.phase = INTRODUCTION
        else:
            self._begin_rounds()

    def _start_stage(self, stage: int) -> None:
        if stage > 0:
            self._next_stage(stage)
        else:
            self._begin_rounds()

    def _begin_rounds(self) -> None:
        st = self.state
        st.round, st.cursor = 0, 0
        for text in self.script.stages[st.stage].public:
            self._say(f"[Public clue] {text}")
        st.phase = CONVERSE
        if self.config.rounds == 0:
            self._end_stage()

    def _end_stage(self) -> None:
        st = self.state
        st.cursor, st.attempts = 0, 0
        if self.rules.forced_investigation and st.phase != SELECT and self.locations():
            st.phase = SELECT
        elif st.stage + 1 < len(self.script.stages):
            self._next_stage(st.stage + 1)
        else:
            st.phase = VOTE

    def _next_select(self) -> None:
        st = self.state
        st.cursor, st.attempts = st.cursor + 1, 0
        if st.cursor == len(st.order) or not self.locations():
            self._end_stage()

    def _next_conversation_turn(self) -> None:
        st = self.state
        st.cursor, st.attempts = st.cursor + 1, 0
        if st.cursor < len(st.order):
            return
        st.cursor, st.round = 0, st.round + 1
        if st.round < self.config.rounds:
            return
        self._end_stage()

    def _next_vote(self) -> None:
        st = self.state
        st.cursor, st.attempts = st.cursor + 1, 0
        if st.cursor == len(st.order):
            st.cursor, st.phase = 0, JUDGE

    def max_acts(self) -> int:
        """An upper bound on the acts of a game (for LangGraph's recursion limit)."""
        n, tries, k = len(self.state.order), self.config.max_reasks + 1, len(self.script.stages)
        return tries * n * (2 + k + (2 * self.config.rounds + 1) * k)
