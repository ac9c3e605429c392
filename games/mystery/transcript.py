"""A readable markdown transcript of murder-mystery episodes."""

from __future__ import annotations

from stratagem.games.core import Episode
from stratagem.games.mystery.library import load_script
from stratagem.games.mystery.metrics import HEADLINE


def episode_markdown(ep: Episode) -> str:
    script = load_script(ep.params.get("script_path") or ep.params["script"])
    m = ep.metrics
    out = [f"## {script.title} (episode {ep.id}, seed {ep.seed})", "",
           f"Speaking order: {', '.join(ep.params['order'])}. Culprit(s): {', '.join(script.culprits)}.", ""]
    stage = None
    for t in ep.turns:
        st = t.info.get("stage")
        if st != stage and script.multi_stage:
            if st is None:
                raise ValueError(f"episode {ep.id}: a turn of {t.role} records no stage")
            out += [f"### Stage {st + 1}", ""]
            stage = st
        head = f"- **{t.role}** ({t.faction}) *{t.phase}*"
        if t.phase not in ("introduction", "answer", "converse") and t.action:
            head += f" `{t.action}`"
        body = t.response.strip().replace("\n", " ") or "(empty)"
        line = f"{head}: {body}"
        if t.illegal_reason:
            line += f"  \n  _failed: {t.illegal_reason}_" + (" (turn passes)" if t.info.get("passed") else "")
        if "clue" in t.info:
            line += f"  \n  _clue from {t.info['location']}: {t.info['clue']}_"
        if "judge" in t.info:
            j = t.info["judge"]
            line += f"  \n  _judge: suspicion {j['suspicion']}, trust {j['trust']}{'' if j['ok'] else ' (unparsed)'}_"
        out.append(line)
    out += ["", "### Verdict", "",
            "| rank | character | faction | doubt | votes |", "|---|---|---|---|---|"]
    votes = list(m["votes"].values())
    for i, c in enumerate(m["ranking"], 1):
        fac = "culprit" if c in script.culprits else "civilian"
        out.append(f"| {i} | {c} | {fac} | {m['doubt'][c]:g} | {votes.count(c)} |")
    out += ["", f"Accused: **{m['accused']}**. Winning faction: **{ep.winning_faction}**.", "",
            " | ".join(f"{k}: {m[k]:.3f}" for k in HEADLINE), "", f"Truth: {script.truth}", ""]
    return "\n".join(out)


def transcript_markdown(episodes: list[Episode]) -> str:
    return "# Murder mystery transcript\n\n" + "\n".join(episode_markdown(ep) for ep in episodes)
