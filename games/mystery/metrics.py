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
- SCI        = mean_c (0.5 * roleplay_c / 20 + 0.5 * ROUGE_c), ROUGE_c = mean over the parts p of c's script
               (Story, Script, Relationship, Performance, Purpose, Ability) of ROUGE-L F1(original part p,
               the judge's reconstruction of part p from the game's transcript); each part is reconstructed and
               compared on its own, a part missing or empty on either side scores 0 (`sci_rouge`). Tokens: jieba
               words for Chinese, lowercase alphanumeric runs for English (`tokens`)
- Overall    = mean(Victory, TII, CIC, ICI, SCI)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from statistics import mean

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
# CJK unified ideographs (basic block, extension A, compatibility ideographs, extensions B-F)
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_jieba = None
_jieba_lock = threading.Lock()


def _segmenter():
    """jieba, imported and initialised on first use (loading its dictionary takes about a second), with its
    "Building prefix dict ..." messages on stderr silenced.

    Why jieba: it is what MIRAGE itself segments with (data_loader.py `cal_rouge_l`: `' '.join(jieba.cut(text))`
    before rouge-chinese's ROUGE-L; requirements.txt pins jieba==0.42.1), so the same words are compared; it is the
    de-facto standard Chinese segmenter, pure Python (MIT) with its dictionary bundled (no download, no model weights).
    Its last release is 0.42.1 (January 2020): not actively released, but stable and working on current Pythons, and
    a frozen segmenter keeps scores comparable across runs. rouge-score's default tokenizer cannot be used for
    Chinese: it keeps only [a-z0-9], so every Chinese text has no tokens at all."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba = jieba
    return _jieba


def detect_language(text: str) -> str:
    """"zh" when most of the text's letters and digits (str.isalnum) are CJK ideographs, else "en"."""
    alnum = sum(1 for ch in text if ch.isalnum())
    return "zh" if alnum and len(_CJK.findall(text)) * 2 > alnum else "en"


def _language(language: str | None, *texts: str) -> str:
    if language is None or language == "auto":
        return detect_language("".join(texts))
    lang = language.lower().replace("_", "-").split("-")[0]
    if lang not in ("zh", "en"):
        raise ValueError(f"language must be 'zh', 'en', 'auto' or None, not {language!r}")
    return lang


def tokens(text: str, language: str | None = None) -> list[str]:
    """The ROUGE tokens of `text`.

    - "en": lowercase runs of [a-z0-9] (exactly rouge-score's default tokenizer without stemming: lowercase, every
      other character a separator, so punctuation and non-ASCII letters are dropped).
    - "zh": jieba's words (accurate mode with HMM, `jieba.lcut(text)`, as MIRAGE's `jieba.cut`), lowercased, dropping
      the tokens that have no letter or digit (whitespace, punctuation, symbols). MIRAGE keeps the punctuation tokens
      (it splits jieba's output on spaces); they are dropped here so that "，" and "。" do not count as matched words,
      the same choice rouge-score makes for English.
    - None or "auto": "zh" if the text is mostly CJK ideographs (`detect_language`), else "en"."""
    if _language(language, text) == "en":
        return _TOKEN.findall(text.lower())
    return [t.lower() for t in _segmenter().lcut(text) if any(ch.isalnum() for ch in t)]


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str, *, language: str | None = None) -> float:
    """ROUGE-L F1 (beta = 1, as rouge-score and rouge-chinese report it), no stemming, on `tokens(text, language)`:
    P = LCS / len(candidate), R = LCS / len(reference), F = 2PR / (P + R); 0 when either side has no tokens.
    language None (auto) picks one tokenizer for both texts, from the two together."""
    lang = _language(language, reference, candidate)
    ref, cand = tokens(reference, lang), tokens(candidate, lang)
    if not ref or not cand:
        return 0.0
    lcs = _lcs_len(ref, cand)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(cand), lcs / len(ref)
    return 2 * p * r / (p + r)


def sci_rouge(parts_reference: Mapping[str, str], parts_reconstruction: Mapping[str, str],
              language: str | None = None) -> tuple[float, dict[str, float]]:
    """The ROUGE half of SCI for one character, as MIRAGE computes it (ScriptEnvs/BaseEnv.py `rouge_eval`): every part
    of the character's script (the keys of `parts_reference`: Story, Script, Relationship, Performance, Purpose,
    Ability) is reconstructed separately, each reconstruction is scored against its own original part with ROUGE-L F1,
    and the character's score is the plain mean over all the script's parts.

    A part missing from `parts_reconstruction` (or empty) scores 0, and so does a part whose original text is empty
    (MIRAGE's `cal_rouge_l` returns 0 when either text is '', and the part still counts in the mean); parts of the
    reconstruction that the script does not have are ignored. language None (auto) picks one tokenizer for every part,
    from all the original parts together. Returns (mean score, {part: score}); (0.0, {}) for a script with no parts."""
    lang = _language(language, *parts_reference.values())
    per_part = {part: rouge_l(text, parts_reconstruction.get(part) or "", language=lang)
                for part, text in parts_reference.items()}
    return (mean(per_part.values()) if per_part else 0.0), per_part


def sci(roleplay: Mapping[str, float], rouge: Mapping[str, float]) -> float:
    return mean(0.5 * roleplay[c] / 20 + 0.5 * rouge[c] for c in roleplay)


def overall(m: Mapping[str, float]) -> float:
    return mean(m[k] for k in ("victory", "tii", "cic", "ici", "sci"))


def game_scores(rank: Sequence[str], culprits: Sequence[str], tii_value: float, revealed: int, total_clues: int,
                per_char: Mapping[str, Mapping[str, float]], turns: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """One game's leaderboard scores from its ranking of the suspects, TII, clues and per-character ICI / role-play /
    ROUGE scores, with its outcome (the accused, the culprit's rank) and its failed acts (turns whose
    `illegal_reason` is set): what both judges report."""
    m: dict[str, object] = {
        "victory": victory(rank, culprits), "tii": tii_value, "cic": cic(revealed, total_clues),
        "ici": ici({n: {k: c[k] for k in ICI_KEYS} for n, c in per_char.items()}),
        "sci": sci({n: c["roleplay"] for n, c in per_char.items()}, {n: c["rouge_l"] for n, c in per_char.items()}),
    }
    m["overall"] = overall(m)  # type: ignore[arg-type]  # the five scores above are floats
    failed = sum(1 for t in turns if t["illegal_reason"] is not None)
    m.update({"civilians_win": rank[0] in culprits, "culprit_rank": rank.index(min(culprits, key=rank.index)) + 1,
              "clues_revealed": revealed, "acts": len(turns), "failed_actions": failed,
              "failed_action_rate": failed / len(turns) if turns else 0.0, "accused": rank[0], "ranking": list(rank)})
    return m


def aggregate(per_game: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Mean over games of every top-level number of the per-game metrics (booleans count as 0/1 rates), plus the
    number of games."""
    out: dict[str, float] = {"games": len(per_game)}
    keys = [k for k, v in (per_game[0].items() if per_game else []) if isinstance(v, (int, float))]
    for k in keys:
        vals = [float(v) for v in (m.get(k) for m in per_game) if isinstance(v, (int, float))]
        if vals:
            out[k] = mean(vals)
    return out
