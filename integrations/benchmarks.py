"""Reasoning benchmarks: loaders, answer extraction and scoring.

Every benchmark becomes a list of `Question`s: an id, the prompt text, the gold answer and its kind (`math`: scored
with math-verify; `choice`: a multiple-choice letter). Files are read from a path the user gives (JSONL, or CSV for
GPQA); the Hugging Face hub is used only when asked for and the `datasets` package is installed. A malformed record
raises `BenchmarkFormatError` naming the file and the line.
"""

from __future__ import annotations

import csv
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratagem.files import read_json_lines

BENCHMARKS = ("gsm8k", "math500", "aime", "amc", "gpqa", "aqua", "mmlu_stem")
LETTERS = "ABCD"
# MMLU's STEM category (Hendrycks et al.'s categories.py: physics, chemistry, biology, computer science, math,
# engineering), 18 subjects
MMLU_STEM_SUBJECTS = (
    "abstract_algebra", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
    "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
    "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning")
# MASLab's question sampling (datasets/build_test_dataset.py): one shuffle with seed 2024, the first 500 kept
MASLAB_SEED, MASLAB_SAMPLE = 2024, 500

# Hub datasets used when no file is given: (dataset id, config, split).
HUB_SOURCES = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime": ("HuggingFaceH4/aime_2024", None, "train"),
    "amc": ("AI-MO/aimo-validation-amc", None, "train"),
    "aqua": ("deepmind/aqua_rat", "raw", "test"),
    "mmlu_stem": ("cais/mmlu", "all", "test"),
}


class BenchmarkFormatError(ValueError):
    """A benchmark file or record is not in the expected format."""


@dataclass
class Question:
    id: str = field(default="", metadata={"help": "Stable id within the benchmark (used to pair and resume)."})
    benchmark: str = field(default="", metadata={"help": "Benchmark name."})
    prompt: str = field(default="", metadata={"help": "The problem as shown to the model (options included)."})
    gold: str = field(default="", metadata={"help": "Gold answer: a math expression or a choice letter."})
    kind: str = field(default="math", metadata={"help": "'math' (math-verify) or 'choice' (an option letter)."})
    letters: str = field(default=LETTERS, metadata={"help": "The option letters of a 'choice' question (A-D; "
                         "AQUA-RAT A-E)."})


def _num_text(value: Any) -> str:
    """Gold answers sometimes come as floats ('27.0'); math-verify compares values, but keep the text clean."""
    s = str(value).strip()
    return s[:-2] if re.fullmatch(r"-?\d+\.0", s) else s


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        return list(read_json_lines(path, torn_tail=False))
    except ValueError as e:
        raise BenchmarkFormatError(str(e)) from e


def _require(path: Path, lineno: int, rec: dict[str, Any], *keys: str) -> list[Any]:
    missing = [k for k in keys if rec.get(k) in (None, "")]
    if missing:
        raise BenchmarkFormatError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; expected {', '.join(keys)}")
    return [rec[k] for k in keys]


def gsm8k_gold(answer: str) -> str | None:
    """The number after '#### ' in a GSM8K answer, thousands separators removed."""
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    return m.group(1).replace(",", "").strip() if m else None


def _gsm8k(path: Path) -> list[Question]:
    out = []
    for lineno, rec in _read_jsonl(path):
        q, a = _require(path, lineno, rec, "question", "answer")
        gold = gsm8k_gold(str(a))
        if gold is None:
            raise BenchmarkFormatError(f"{path}:{lineno}: answer has no '#### <number>' line")
        out.append(Question(id=str(rec.get("id", lineno)), benchmark="gsm8k", prompt=str(q), gold=gold))
    return out


def _problem_answer(name: str) -> Callable[[Path], list[Question]]:
    def load(path: Path) -> list[Question]:
        out = []
        for lineno, rec in _read_jsonl(path):
            p, a = _require(path, lineno, rec, "problem", "answer")
            out.append(Question(id=str(rec.get("id", rec.get("unique_id", lineno))), benchmark=name, prompt=str(p),
                                gold=_num_text(a)))
        return out
    return load


GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return [(i, row) for i, row in enumerate(csv.DictReader(f), 2)]  # line 1 is the header
    return _read_jsonl(path)


def gpqa_question(rec: dict[str, Any], qid: str, seed: int) -> Question:
    """A GPQA record with its four options shuffled by (seed, id), so every model sees the same order."""
    question, correct, *wrong = (str(rec[k]).strip() for k in GPQA_FIELDS)
    options = [correct, *wrong]
    random.Random(f"{seed}:{qid}").shuffle(options)
    body = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return Question(id=qid, benchmark="gpqa", prompt=f"{question}\n\n{body}", gold=LETTERS[options.index(correct)],
                    kind="choice")


def _gpqa(path: Path, seed: int = 0) -> list[Question]:
    out = []
    for lineno, rec in _gpqa_rows(path):
        _require(path, lineno, rec, *GPQA_FIELDS)
        out.append(gpqa_question(rec, str(rec.get("Record ID") or lineno), seed))
    return out


def choices_text(options: list[str], letters: str) -> str:
    return "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(options))


def aqua_question(rec: dict[str, Any], qid: str) -> Question:
    """An AQUA-RAT record: `options` as published ("A)12", ...), `correct` the letter."""
    letters = "ABCDE"
    options = [re.sub(r"^\s*[A-E]\s*\)\s*", "", str(o)) for o in rec["options"]]
    if len(options) != 5 or str(rec["correct"]).strip().upper() not in letters:
        raise ValueError("expected five options A-E and a correct letter")
    return Question(id=qid, benchmark="aqua", prompt=f"{str(rec['question']).strip()}\n\n"
                    f"{choices_text(options, letters)}", gold=str(rec["correct"]).strip().upper(), kind="choice",
                    letters=letters)


def _aqua(path: Path) -> list[Question]:
    out = []
    for lineno, rec in _read_jsonl(path):
        _require(path, lineno, rec, "question", "options", "correct")
        try:
            out.append(aqua_question(rec, str(rec.get("id", lineno))))
        except ValueError as e:
            raise BenchmarkFormatError(f"{path}:{lineno}: {e}") from None
    return out


def mmlu_question(rec: dict[str, Any], qid: str) -> Question:
    """An MMLU record (cais/mmlu's fields): `question`, four `choices`, `answer` an index 0-3 (or a letter)."""
    choices = [str(c) for c in rec["choices"]]
    answer = rec["answer"]
    gold = LETTERS[int(answer)] if str(answer).strip().isdigit() else str(answer).strip().upper()
    if len(choices) != 4 or gold not in LETTERS:
        raise ValueError("expected four choices and an answer 0-3 or A-D")
    return Question(id=qid, benchmark="mmlu_stem", prompt=f"{str(rec['question']).strip()}\n\n"
                    f"{choices_text(choices, LETTERS)}", gold=gold, kind="choice")


def _mmlu_stem(path: Path) -> list[Question]:
    """The STEM subjects' questions of an MMLU file (JSONL with a `subject` field; other subjects are skipped)."""
    out = []
    for lineno, rec in _read_jsonl(path):
        _require(path, lineno, rec, "question", "choices", "answer", "subject")
        if rec["subject"] not in MMLU_STEM_SUBJECTS:
            continue
        try:
            out.append(mmlu_question(rec, str(rec.get("id", lineno))))
        except ValueError as e:
            raise BenchmarkFormatError(f"{path}:{lineno}: {e}") from None
    return out


def maslab_sample(questions: list[Question], n: int = MASLAB_SAMPLE, seed: int = MASLAB_SEED) -> list[Question]:
    """MASLab's sample: the questions shuffled once by random.seed(seed), the first n kept, repeated prompts
    dropped (its deduplicate keeps the first). A benchmark of n or fewer (AIME 30, AMC 40, GPQA-Diamond 198) is
    kept whole, in the shuffled order."""
    pool = list(questions)
    random.Random(seed).shuffle(pool)
    seen: set[str] = set()
    out = []
    for q in pool[:n]:
        if q.prompt not in seen:
            seen.add(q.prompt)
            out.append(q)
    return out


LOADERS: dict[str, Callable[[Path], list[Question]]] = {
    "gsm8k": _gsm8k, "math500": _problem_answer("math500"), "aime": _problem_answer("aime"),
    "amc": _problem_answer("amc"), "aqua": _aqua, "mmlu_stem": _mmlu_stem,
}


def _from_hub(name: str) -> list[Question]:
    if name not in HUB_SOURCES:
        raise BenchmarkFormatError(f"{name} is not loaded from the hub (GPQA is gated): pass a file path")
    try:
        import datasets  # optional: only for hub loading
    except ModuleNotFoundError as e:
        raise BenchmarkFormatError(f"loading {name} from the hub needs the `datasets` package; "
                                   "install it or pass --data PATH") from e
    repo, config, split = HUB_SOURCES[name]
    ds = datasets.load_dataset(repo, config, split=split)
    tmp: list[Question] = []
    for i, rec in enumerate(ds):
        if name == "aqua":
            tmp.append(aqua_question(rec, str(i + 1)))
        elif name == "mmlu_stem":
            if rec["subject"] in MMLU_STEM_SUBJECTS:
                tmp.append(mmlu_question(rec, str(i + 1)))
        elif name == "gsm8k":
            tmp.append(Question(id=str(i + 1), benchmark=name, prompt=rec["question"], gold=gsm8k_gold(rec["answer"]) or ""))
        else:
            tmp.append(Question(id=str(rec.get("id", rec.get("unique_id", i + 1))), benchmark=name,
                                prompt=rec["problem"], gold=_num_text(rec["answer"])))
    return tmp


def load_benchmark(name: str, path: str | Path | None = None, *, limit: int | None = None,
                   seed: int = 0, sample: str = "first") -> list[Question]:
    """The first `limit` questions of benchmark `name` from `path` (or the hub when `path` is None), in the file's
    order (`sample` 'first') or in MASLab's sample (`sample` 'maslab': maslab_sample, then the first `limit`)."""
    if sample not in ("first", "maslab"):
        raise BenchmarkFormatError(f"sample must be 'first' or 'maslab', got {sample!r}")
    if name not in BENCHMARKS:
        raise BenchmarkFormatError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    if path is None:
        questions = _from_hub(name)
    else:
        p = Path(path)
        if not p.is_file():
            raise BenchmarkFormatError(f"benchmark file {p} does not exist")
        questions = _gpqa(p, seed) if name == "gpqa" else LOADERS[name](p)
    if not questions:
        raise BenchmarkFormatError(f"benchmark file {path} holds no questions")
    if sample == "maslab":
        questions = maslab_sample(questions)
    return questions[:limit] if limit else questions


def instruction(q: Question) -> str:
    """The answer-format line appended to every prompt, so extraction has something to find."""
    if q.kind == "choice":
        return "Think briefly, then end with 'The answer is (X)' where X is the letter of your choice."
    return "Think briefly, then put your final answer in \\boxed{}."


def task_text(q: Question) -> str:
    return f"{q.prompt}\n\n{instruction(q)}"


# ---- answer extraction -------------------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces respected; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the reply was cut off inside the box


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in the text, thousands separators removed and a trailing '.0' dropped."""
    nums = [n.replace(",", "") for n in _NUMBER.findall(text)]
    nums = [n for n in nums if n not in ("", "-")]
    return _num_text(nums[-1].rstrip(".")) if nums else None


def _letter_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    span = f"[{letters[0]}-{letters[-1]}]"
    return (re.compile(rf"answer\s*(?:is|:)?\s*\(?\s*({span})\b\)?", re.IGNORECASE),
            re.compile(rf"\(({span})\)"),
            re.compile(rf"\b({span})\b"))


def choice_letter(text: str, letters: str = LETTERS) -> str | None:
    """The chosen option letter (one of `letters`): the last 'answer is (X)', else the last '(X)', else the last
    standalone letter."""
    boxed = last_boxed(text)
    if boxed and re.fullmatch(r"\(?([A-Za-z])\)?", boxed) and boxed.strip("()").upper() in letters:
        return boxed.strip("()").upper()
    for pat in _letter_patterns(letters):
        hits = [h.upper() for h in pat.findall(text) if h.upper() in letters]
        if hits:
            return hits[-1]
    return None


def extract_answer(text: str, kind: str = "math", letters: str = LETTERS) -> str | None:
    """The answer a reply commits to: a letter for 'choice', else the last \\boxed{} or the last number."""
    if kind == "choice":
        return choice_letter(text, letters)
    boxed = last_boxed(text)
    return boxed if boxed else last_number(text)


def _timeouts() -> tuple[dict[str, Any], dict[str, Any]]:
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if main else None}, {"timeout_seconds": 5 if main else None}


def is_correct(prediction: str | None, gold: str, kind: str = "math") -> bool:
    """Whether an extracted prediction matches the gold answer (math-verify for math, letter equality for choice)."""
    if prediction is None or prediction.strip() == "":
        return False
    if kind == "choice":
        return prediction.strip().upper() == gold.strip().upper()
    from math_verify import parse, verify

    ptimeout, vtimeout = _timeouts()
    gold_parsed = parse(f"${gold}$", **ptimeout)
    pred_parsed = parse(f"${prediction}$", **ptimeout)
    if not gold_parsed or not pred_parsed:
        return prediction.strip() == gold.strip()
    return bool(verify(gold_parsed, pred_parsed, **vtimeout))
