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


# --- Chinese (jieba-segmented) ROUGE-L and the per-part SCI ROUGE ---------------------------------------------------

ZH_REF = "管家昨晚在书房里发现了一封信。"
ZH_CAND = "昨晚管家在花园里发现了一把钥匙和一封信。"


def test_identical_chinese_strings_score_one():
    for text in (ZH_REF, "你是灯塔看守人，那天晚上你在塔顶。", "你好"):
        assert M.rouge_l(text, text) == 1.0  # auto-detected as Chinese
        assert M.rouge_l(text, text, language="zh") == 1.0
    # the old tokenizer (kept as language="en") sees no tokens in Chinese at all: that was the bug
    assert M.tokens(ZH_REF, "en") == [] and M.rouge_l(ZH_REF, ZH_REF, language="en") == 0.0


def test_chinese_hand_worked_example():
    # jieba 0.42's segmentation (accurate mode), punctuation dropped:
    assert M.tokens(ZH_REF, "zh") == ["管家", "昨晚", "在", "书房", "里", "发现", "了", "一封信"]  # 8 tokens
    assert M.tokens(ZH_CAND, "zh") == ["昨晚", "管家", "在", "花园里", "发现", "了", "一把", "钥匙", "和", "一封信"]  # 10
    assert M.tokens(ZH_REF) == M.tokens(ZH_REF, "zh")  # auto-detected
    # LCS: 管家 (or 昨晚, they are swapped) 在 发现 了 一封信 = 5 (书房里 vs 花园里 do not match)
    # P = 5/10, R = 5/8, F = 2PR / (P + R) = (5/8) / (9/8) = 5/9
    assert M.rouge_l(ZH_REF, ZH_CAND) == pytest.approx(5 / 9, abs=1e-12)
    assert M.rouge_l(ZH_REF, ZH_CAND, language="zh") == pytest.approx(5 / 9, abs=1e-12)


def test_chinese_punctuation_and_whitespace_are_not_tokens():
    assert M.tokens("管家，在 书房。！", "zh") == ["管家", "在", "书房"]
    assert M.rouge_l("管家，在书房。", "管家在书房") == 1.0
    assert M.tokens("你见到了Marr先生", "zh") == ["你", "见到", "了", "marr", "先生"]  # Latin words lowercased


def test_language_detection():
    assert M.detect_language(ZH_REF) == "zh"
    assert M.detect_language("你在11点见到了Marr先生。") == "zh"  # mostly ideographs
    assert M.detect_language("You met Marr at 11 pm.") == "en"
    assert M.detect_language("") == "en" and M.detect_language("。！") == "en"
    assert M.rouge_l("", "") == 0.0 and M.rouge_l(ZH_REF, "") == 0.0
    with pytest.raises(ValueError):
        M.rouge_l("a", "a", language="fr")


class _ZhTokenizer:
    def tokenize(self, text):
        return M.tokens(text, "zh")


def test_chinese_rouge_l_matches_rouge_score_lcs_on_the_same_tokens():
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_ZhTokenizer())
    texts = [ZH_REF, ZH_CAND, "你是灯塔看守人，那天晚上你在塔顶。", "那天晚上，看守人在塔顶看见了一艘船。",
             "你和管家是兄弟。", "管家是你的兄弟，你们昨晚吵了一架。"]
    pairs = [(a, b) for a in texts for b in texts]
    assert [M.rouge_l(a, b) for a, b in pairs] == pytest.approx(
        [scorer.score(a, b)["rougeL"].fmeasure for a, b in pairs], abs=1e-12)


def test_jieba_is_silent_on_first_use():
    import subprocess
    import sys

    code = ("from stratagem.games.mystery import metrics as M\n"
            "assert M._jieba is None\n"  # not loaded at import time
            "assert M.rouge_l('管家在书房', '管家在书房') == 1.0\n"
            "assert M._jieba is not None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and out.stdout == ""


def test_sci_rouge_english_hand_worked_per_part():
    reference = {
        "Story": "You are the lighthouse keeper.",  # you are the lighthouse keeper: 5 tokens
        "Script": "At 11 pm you climbed the tower.",  # at 11 pm you climbed the tower: 7
        "Relationship": "Marr is your brother.",
        "Ability": "",  # empty in the script: scores 0 and still counts (MIRAGE's cal_rouge_l)
    }
    reconstruction = {
        "Story": "You are the keeper of the lighthouse.",  # 7 tokens
        "Script": "You climbed the tower at 11 pm.",  # 7 tokens
        # Relationship missing: 0
        "Ability": "You can see in the dark.",
        "Purpose": "Find the truth.",  # not a part of this script: ignored
    }
    score, per_part = M.sci_rouge(reference, reconstruction, "en")
    assert set(per_part) == {"Story", "Script", "Relationship", "Ability"}
    # Story: LCS "you are the lighthouse" = 4; P = 4/7, R = 4/5, F = (32/35) / (48/35) = 2/3
    assert per_part["Story"] == pytest.approx(2 / 3, abs=1e-12)
    # Script: LCS "you climbed the tower" = 4 (beats "at 11 pm" = 3); P = R = 4/7, F = 4/7
    assert per_part["Script"] == pytest.approx(4 / 7, abs=1e-12)
    assert per_part["Relationship"] == 0.0 and per_part["Ability"] == 0.0
    # mean over the script's 4 parts: (2/3 + 4/7 + 0 + 0) / 4 = (26/21) / 4 = 13/42
    assert score == pytest.approx(13 / 42, abs=1e-12)
    for part in ("Story", "Script"):  # each part against its own original part, as rouge-score scores it
        assert per_part[part] == pytest.approx(reference_f1(reference[part], reconstruction[part]), abs=1e-12)
    assert M.sci_rouge(reference, reconstruction) == (score, per_part)  # auto-detects English
    assert M.sci_rouge({}, {"Story": "x"}, "en") == (0.0, {})


def test_sci_rouge_chinese_parts_and_perfect_reconstruction():
    reference = {"Story": ZH_REF, "Script": "你是灯塔看守人，那天晚上你在塔顶。"}
    score, per_part = M.sci_rouge(reference, {"Story": ZH_CAND, "Script": reference["Script"]}, "zh")
    assert per_part == {"Story": pytest.approx(5 / 9, abs=1e-12), "Script": 1.0}
    assert score == pytest.approx((5 / 9 + 1) / 2, abs=1e-12)
    assert M.sci_rouge(reference, reference) == (1.0, {"Story": 1.0, "Script": 1.0})  # auto-detects Chinese
    # a part is compared with its own original part only: swapping two parts' texts loses both
    swapped = M.sci_rouge(reference, {"Story": reference["Script"], "Script": reference["Story"]})
    assert swapped[0] < 0.2
