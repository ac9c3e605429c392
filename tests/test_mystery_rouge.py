"""The mystery's ROUGE-L (the reconstruction half of SCI) against the reference implementation, Google's
`rouge-score` package (what MIRAGE's numbers come from): the same F1 on hand-made cases, punctuation and case,
the shipped scripts' texts and random word sequences."""

import random

import pytest
from rouge_score import rouge_scorer

from stratagem.games.mystery import metrics as M
from stratagem.games.mystery.library import load_script, shipped_scripts

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_f1(reference: str, candidate: str) -> float:
    return SCORER.score(reference, candidate)["rougeL"].fmeasure  # score(target, prediction)


CASES = [
    ("the cat sat on the mat", "the cat lay on a mat"),  # LCS 4 of 6 and 6: F = 2/3
    ("The Cat, sat ON the mat!", "the cat -- sat on THE mat?"),  # case and punctuation are ignored: F = 1
    ("a b c d e", "e d c b a"),  # LCS 1: F = 1/5
    ("Room 12 at 11 pm", "at 11 pm in room 12"),
    ("one two", "three four"),  # nothing shared: F = 0
    ("x", ""),
    ("", "y"),
    ("... !!!", "words"),  # no tokens on one side
    ("café au lait", "cafe au lait"),  # non-ASCII letters are dropped by both tokenizers
    ("a a a b", "a b a b a"),
]


@pytest.mark.parametrize("reference, candidate", CASES)
def test_rouge_l_matches_rouge_score_on_hand_made_cases(reference, candidate):
    assert M.rouge_l(reference, candidate) == pytest.approx(reference_f1(reference, candidate), abs=1e-12)


def test_rouge_l_hand_worked_values():
    assert M.rouge_l(*CASES[0]) == pytest.approx(2 / 3)
    assert M.rouge_l(*CASES[1]) == 1.0
    assert M.rouge_l(*CASES[2]) == pytest.approx(1 / 5)
    assert M.rouge_l(*CASES[4]) == 0.0


def test_rouge_l_matches_rouge_score_on_script_texts_and_random_words():
    pairs = []
    for name in shipped_scripts():
        script = load_script(name)
        texts = [script.field_text(c, "Script") for c in script.characters]
        pairs += [(a, b) for a in texts for b in texts]  # each character's script against every other (and itself)
    rng = random.Random(0)
    vocab = ["the", "keeper", "lamp", "oil", "night", "11", "pm", "ledger", "Marr", "door", "key", "storm"]
    for _ in range(200):
        pairs.append((" ".join(rng.choices(vocab, k=rng.randint(0, 30))),
                      " ".join(rng.choices(vocab, k=rng.randint(0, 30)))))
    assert len(pairs) > 220
    mine = [M.rouge_l(a, b) for a, b in pairs]
    assert mine == pytest.approx([reference_f1(a, b) for a, b in pairs], abs=1e-12)
    assert len({round(v, 6) for v in mine}) > 50  # the comparison covers many different values, not only 0 and 1
