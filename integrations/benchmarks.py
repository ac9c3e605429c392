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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from stratagem.files import read_json_lines

BENCHMARKS = ("gsm8k", "math500", "aime", "amc", "gpqa")
LETTERS = "ABCD"

# Hub datasets used when no file is given: (dataset id, config, split).
HUB_SOURCES = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "aime": ("HuggingFaceH4/aime_2024", None, "train"),
    "amc": ("AI-MO/aimo-validation-amc", None, "train"),
}


class BenchmarkFormatError(ValueError):
    """A benchmark file or record is not in the expected format."""


@dataclass
class Question:
    id: str = field(default="", metadata={"help": "Stable id within the benchmark (used to pair and resume)."})
    benchmark: str = field(default="", metadata={"help": "Benchmark name."})
    prompt: str = field(default="", metadata={"help": "The problem as shown to the model (options included)."})
    gold: str = field(default="", metadata={"help": "Gold answer: a math expression or a choice letter."})
    kind: str = field(default="math", metadata={"help": "'math' (math-verify) or 'choice' (letter A-D)."})


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


LOADERS: dict[str, Callable[[Path], list[Question]]] = {
    "gsm8k": _gsm8k, "math500": _problem_answer("math500"), "aime": _problem_answer("aime"),
    "amc": _problem_answer("amc"),
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
        if name == "gsm8k":
            tmp.append(Question(id=str(i + 1), benchmark=name, prompt=rec["question"], gold=gsm8k_gold(rec["answer"]) or ""))
        else:
            tmp.append(Question(id=str(rec.get("id", rec.get("unique_id", i + 1))), benchmark=name,
                                prompt=rec["problem"], gold=_num_text(rec["answer"])))
    return tmp


def load_benchmark(name: str, path: str | Path | None = None, *, limit: int | None = None,
                   seed: int = 0) -> list[Question]:
    """The first `limit` questions of benchmark `name` from `path` (or the hub when `path` is None)."""
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


_LETTER_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*\(?\s*([A-D])\b\)?", re.IGNORECASE),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"\b([A-D])\b"),
)


def choice_letter(text: str) -> str | None:
    """The chosen option letter: the last 'answer is (X)', else the last '(X)', else the last standalone A-D."""
    boxed = last_boxed(text)
    if boxed and re.fullmatch(r"\(?([A-Da-d])\)?", boxed):
        return boxed.strip("()").upper()
    for pat in _LETTER_PATTERNS:
        hits = pat.findall(text)
        if hits:
            return hits[-1].upper()
    return None


def extract_answer(text: str, kind: str = "math") -> str | None:
    """The answer a reply commits to: a letter for 'choice', else the last \\boxed{} or the last number."""
    if kind == "choice":
        return choice_letter(text)
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
