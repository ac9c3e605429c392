"""The judges of the `mirage` protocol, as MIRAGE's environments call them (ScriptEnvs/BaseEnv.py: query, belief,
llms_eval, rouge_eval; MOC.py: self_query, self_belief):

- Suspicion and trust of every statement (introductions, conversation moves with their words, investigations with
  their words, answers): two separate requests (0-2 each) over the history the players saw at that moment, asked of
  the model of the speaker's side (`judges[faction]`: in a self-play evaluation, the model under test). A script
  whose suspects are no players (rules.judge_npcs, MIRAGE's MOC) judges each candidate instead after every completed
  act, from the history alone, by the players' (civilian) model, as MIRAGE does (its culprit list there is empty).
- ICI and role-play: an evaluation model (`evaluator`, any endpoint) sees the character's sheet, personal clues, the
  whole history, everything the character thought and did, the list of characters and the TRUTH, and grades one
  ability per request (reasoning, communication, detail, creativity, role-play: five requests, 0-20).
- SCI's ROUGE half: the evaluation model rewrites each of the six parts of the character's script separately from the
  history and the character's acts (without the truth); each is compared with that part of the script as the player
  was given it (the summarised part when the script was summarised) by ROUGE-L (metrics.sci_rouge).
- Multi-stage scripts count doubt and TII over the last stage only (rules.score_last_stage), as MIRAGE resets them
  at every stage.

A reply whose score cannot be read counts as 0 and in `judge_parse_failures`; nothing is asked twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stratagem.agents.base import Agent
from stratagem.concurrency import map_concurrent
from stratagem.games.core import Observation
from stratagem.games.mystery import metrics as M
from stratagem.games.mystery.game import (
    ANSWER,
    ASK,
    CIVILIAN,
    GAME,
    INTRODUCTION,
    INVESTIGATE,
    MysteryConfig,
    MysteryGame,
    MysteryState,
)
from stratagem.games.mystery.judge import JudgeVerdict, parse_scores
from stratagem.games.mystery.prompting import split_thought
from stratagem.games.mystery.schema import Script

JUDGE_SUSPICION, JUDGE_TRUST, JUDGE_ABILITY, JUDGE_PART = (
    "judge_suspicion", "judge_trust", "judge_ability", "judge_part")
PARTS = ("Story", "Script", "Relationship", "Performance", "Purpose", "Ability")
ABILITIES = ("reasoning", "communication", "detail", "creativity", "roleplay")
JUDGED = (INTRODUCTION, ASK, INVESTIGATE, ANSWER)


def _obs(system: str, phase: str, user: str, role: str = "judge") -> Observation:
    return Observation(game=GAME, seat=-1, role=role, phase=phase, legal_actions=[], private={"thought": True},
                       messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])


def score(raw: str, hi: int) -> tuple[int, bool]:
    """The integer score of a judge reply (its RESPONSE part, or the "score" of a JSON reply), clamped to 0..hi."""
    p = parse_scores(raw, ("score",), 0, hi)
    if not p.ok:
        _, response = split_thought(raw)
        m = re.search(r"-?\d+", response)
        if m:
            return max(0, min(hi, int(m.group(0)))), True
    return int(round(p.values["score"])), p.ok


def summary_part(summary: str, part: str) -> str | None:
    """The text of `part` in a summary written as 'Part: text' lines (summary.Summariser.character)."""
    m = re.search(rf"^{part}: (.*?)(?=^\w+: |\Z)", summary, re.MULTILINE | re.DOTALL)
    return m.group(1).strip() if m else None


def reference_parts(game: MysteryGame, name: str) -> dict[str, str]:
    """Each part of the character's script as the player was given it at the last stage."""
    st, last = game.state, len(game.script.stages) - 1
    out = {p: game.script.field_text(name, p, last) for p in PARTS}
    if name in st.summaries:
        summary = st.summaries[name][min(last, len(st.summaries[name]) - 1)]
        out = {p: (s if (s := summary_part(summary, p)) is not None else t) for p, t in out.items()}
    return out


def acts_of(state: MysteryState, name: str, stages: set[int] | None) -> str:
    """Everything a character thought and did (their legal acts, with their outcome), as the evaluator reads it."""
    lines = []
    for t in state.turns:
        if t["role"] != name or t["illegal_reason"] is not None or (stages and t["info"]["stage"] not in stages):
            continue
        info = t["info"]
        line = f"THOUGHT: {info['thought']}\n" if info.get("thought") else ""
        line += f"RESPONSE: {info.get('said', t['response'])}"
        if info.get("clue"):
            line += f"\n[Clue][{info['location']}]: {info['clue']}"
        lines.append(line)
    return "\n".join(lines) if lines else "(did nothing)"


async def judge_game_mirage(judges: Mapping[str, Agent] | Agent, evaluator: Agent, script: Script,
                            state: MysteryState, config: MysteryConfig) -> JudgeVerdict:
    game = MysteryGame(script, state, config)
    P, rules = game.prompts, game.rules
    judge_of = (lambda side: judges[side]) if isinstance(judges, Mapping) else (lambda side: judges)
    last = len(script.stages) - 1
    scored_stages = {last} if rules.score_last_stage else None
    names = list(state.order)
    suspects = script.suspects

    # ---- suspicion and trust -----------------------------------------------------------------------------------
    requests: list[tuple[Agent, Observation]] = []
    points: list[dict[str, Any]] = []  # what each pair of requests judges
    if rules.judge_npcs:
        for k, act in enumerate(state.acts_done):
            history = game.history_text(act["seen"])
            for c in script.candidates:
                for phase, key in ((JUDGE_SUSPICION, "npc_suspicion"), (JUDGE_TRUST, "npc_trust")):
                    requests.append((judge_of(CIVILIAN), _obs(P["judge_system"], phase, P[key].format(
                        history=history, candidate=c) + "\n\n" + P["reply_format"].format(
                        response=P["score_response_0_2"]))))
                points.append({"act": k, "speaker": c, "stage": act["stage"]})
    else:
        for i, t in enumerate(state.turns):
            if t["illegal_reason"] is not None or t["phase"] not in JUDGED:
                continue
            history = game.history_text(t["info"]["seen"])
            said = t["info"].get("said", t["response"])
            for phase, key in ((JUDGE_SUSPICION, "judge_suspicion"), (JUDGE_TRUST, "judge_trust")):
                requests.append((judge_of(game.faction(t["role"])), _obs(P["judge_system"], phase, P[key].format(
                    history=history, speaker=game.shown(t["role"]), content=said) + "\n\n" +
                    P["reply_format"].format(response=P["score_response_0_2"]))))
            points.append({"turn": i, "speaker": t["role"], "stage": t["info"]["stage"]})

    # ---- the evaluation model ----------------------------------------------------------------------------------
    history = game.history_text()
    characters = ", ".join(game.shown(n) for n in names)
    per_char_requests: list[tuple[str, str, Observation]] = []
    for n in names:
        acts = acts_of(state, n, scored_stages)
        common = dict(name=game.shown(n), history=history, actions=acts, characters=characters)
        for ab in ABILITIES:
            user = P["eval_ability"].format(**common, description=game.summary(n),
                                            clues=game.personal_clues(n) or P["no_clues"], truth=script.truth,
                                            ability=P["abilities"][ab])
            per_char_requests.append((n, ab, _obs(P["eval_system"], JUDGE_ABILITY, user + "\n\n" +
                                                  P["reply_format"].format(response=P["score_response_0_20"]))))
        for part in PARTS:
            user = P["reconstruct"].format(**common, part=part, part_help=P["parts"][part])
            per_char_requests.append((n, part, _obs(P["eval_system"], JUDGE_PART, user + "\n\n" +
                                                    P["reply_format"].format(response=P["reconstruct_response"]))))

    async def ask(job: tuple[Agent, Observation]) -> str:
        return (await job[0].act(job[1])).text or ""

    jobs = requests + [(evaluator, obs) for _, _, obs in per_char_requests]
    replies = await map_concurrent(ask, jobs, max(1, config.judge_concurrency))
    judged, evaluated = replies[: len(requests)], replies[len(requests):]

    failures = 0
    scored: list[dict[str, Any]] = []
    for k, pt in enumerate(points):
        (su, ok1), (tr, ok2) = score(judged[2 * k], 2), score(judged[2 * k + 1], 2)
        failures += (not ok1) + (not ok2)
        scored.append({**pt, "suspicion": su, "trust": tr, "ok": ok1 and ok2,
                       "raw": {"suspicion": judged[2 * k], "trust": judged[2 * k + 1]}})

    per_char: dict[str, dict[str, Any]] = {n: {"raw": {}} for n in names}
    reconstruction: dict[str, dict[str, str]] = {n: {} for n in names}
    for (n, what, _), raw in zip(per_char_requests, evaluated):
        per_char[n]["raw"][what] = raw
        if what in ABILITIES:
            v, ok = score(raw, 20)
            failures += not ok
            per_char[n][what] = float(v)
        else:
            reconstruction[n][what] = split_thought(raw)[1]
    for n in names:
        per_char[n]["rouge_l"], per_char[n]["rouge_parts"] = M.sci_rouge(
            reference_parts(game, n), reconstruction[n], "zh" if script.language == "Zh" else "en")

    counted = [u for u in scored if scored_stages is None or u["stage"] in scored_stages]
    triples = [(u["speaker"], u["suspicion"], u["trust"]) for u in counted if u["speaker"] in suspects]
    n_vote = config.vote_weight if config.vote_weight is not None else float(len(names))
    doubt = M.doubt_scores(suspects, triples, state.votes, n_vote)
    rank = M.ranking(suspects, doubt, state.votes)
    m: dict[str, Any] = M.game_scores(rank, script.culprits, M.tii(suspects, triples), len(state.revealed),
                                      script.total_clues, {n: per_char[n] for n in names}, state.turns)
    m.update({
        "protocol": "mirage", "rules": rules.name,
        "judge_calls": len(jobs), "judge_parse_failures": failures,
        "history_summaries": len(state.history_summaries), "summary_failures": state.summary_failures,
        "doubt": doubt, "votes": dict(state.votes), "vote_weight": n_vote,
        "characters": per_char,
    })
    return JudgeVerdict(metrics=m, utterance_scores=[u for u in scored if "turn" in u],
                        npc_scores=[u for u in scored if "act" in u])


__all__ = ["ABILITIES", "JUDGE_ABILITY", "JUDGE_PART", "JUDGE_SUSPICION", "JUDGE_TRUST", "PARTS",
           "judge_game_mirage", "reference_parts", "score", "summary_part"]
