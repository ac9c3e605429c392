"""The murder-mystery metrics (MIRAGE's), each a pure function over judge scores and game facts.

Notation: characters c; an utterance u (an introduction, a question or an answer) by speaker(u) gets judge scores
susp(u), trust(u) in {0, 1, 2} (how suspicious / how trustworthy it makes its speaker look); votes(c) = votes c
received; N = vote weight.

- doubt(c)   = sum_{u: speaker(u)=c} susp(u) - sum_{u: speaker(u)=c} trust(u) + N * votes(c)
- ranking    = characters by doubt, highest first; ties by more votes received, then speaking order
- accused    = ranking[0]; civilians win iff the accused is a culprit
- Victory    = 1 / rank of the true culprit (1-based; with several culprits the best-ranked one)
- TII        = mean_c S_c / (S_c + T_c), S_c = sum susp, T_c = sum trust over c's utterances; a character with
               S_c + T_c = 0 counts 0.5 (neither inclination)
- CIC        = clues revealed / clues in the whole script (every stage)
- ICI        = mean_c (reasoning + communication + detail observation + creative thinking) / 80, each judge score 0-20
- SCI        = mean_c (0.5 * roleplay_c / 20 + 0.5 * ROUGE-L F1(script_c, reconstruction_c))
- Overall    = mean(Victory, TII, CIC, ICI, SCI)
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Iterable, Mapping, Sequence

ICI_KEYS = ("reasoning", "communication", "detail", "creativity")
HEADLINE = ("victory", "tii", "cic", "ici", "sci", "overall")


def doubt_scores(order: Sequence[str], utterances: Iterable[tuple[str, int, int]], votes: Mapping[str, str],
                 vote_weight: float) -> dict[str, float]:
    """utterances: (speaker, suspicion, trust); votes: voter -> target (a vote for someone outside `order` is
    ignored)."""
    d = {c: 0.0 for c in order}
    for speaker, s, t in utterances:
        d[speaker] += s - t
    for target in votes.values():
        if target in d:
            d[target] += vote_weight
    return d


def ranking(order: Sequence[str], doubt: Mapping[str, float], votes: Mapping[str, str]) -> list[str]:
    received = {c: sum(1 for t in votes.values() if t == c) for c in order}
    return sorted(order, key=lambda c: (-doubt[c], -received[c], order.index(c)))


def victory(rank: Sequence[str], culprits: Sequence[str]) -> float:
    return 1.0 / (1 + min(rank.index(c) for c in culprits))


def tii(order: Sequence[str], utterances: Iterable[tuple[str, int, int]]) -> float:
    s = {c: 0 for c in order}
    t = {c: 0 for c in order}
    for speaker, su, tr in utterances:
        s[speaker] += su
        t[speaker] += tr
    return mean(s[c] / (s[c] + t[c]) if s[c] + t[c] else 0.5 for c in order)


def cic(revealed: int, total: int) -> float:
    return revealed / total if total else 0.0


def ici(scores: Mapping[str, Mapping[str, float]]) -> float:
    """scores: character -> the four ICI_KEYS scores (0-20)."""
    return mean(sum(v[k] for k in ICI_KEYS) / 80 for v in scores.values())


_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (beta = 1, as rouge-score reports it) on lowercase alphanumeric tokens, no stemming:
    P = LCS / len(candidate), R = LCS / len(reference), F = 2PR / (P + R)."""
    ref, cand = _TOKEN.findall(reference.lower()), _TOKEN.findall(candidate.lower())
    if not ref or not cand:
        return 0.0
    prev = [0] * (len(cand) + 1)
    for r in ref:
        cur = [0] * (len(cand) + 1)
        for j, c in enumerate(cand, 1):
            cur[j] = prev[j - 1] + 1 if r == c else max(prev[j], cur[j - 1])
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(cand), lcs / len(ref)
    return 2 * p * r / (p + r)


def sci(roleplay: Mapping[str, float], rouge: Mapping[str, float]) -> float:
    return mean(0.5 * roleplay[c] / 20 + 0.5 * rouge[c] for c in roleplay)


def overall(m: Mapping[str, float]) -> float:
    return mean(m[k] for k in ("victory", "tii", "cic", "ici", "sci"))


def aggregate(per_game: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Mean over games of every top-level number of the per-game metrics (booleans count as 0/1 rates), plus the
    number of games."""
    out: dict[str, float] = {"games": len(per_game)}
    keys = [k for k, v in (per_game[0].items() if per_game else []) if isinstance(v, (int, float))]
    for k in keys:
        vals = [float(m[k]) for m in per_game if isinstance(m.get(k), (int, float))]
        if vals:
            out[k] = mean(vals)
    return out
