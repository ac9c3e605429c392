"""The shared file helpers (atomic writes, the JSON-lines reader) and the one concurrent collector."""

from __future__ import annotations

import asyncio

import pytest

from stratagem.concurrency import map_concurrent
from stratagem.files import atomic_directory, atomic_write, read_json_lines
from stratagem.games.core import Episode, Seat, read_jsonl


def _ep(seed: int) -> Episode:
    return Episode(game="tictactoe", seed=seed, seats=[Seat(0, "X", "random"), Seat(1, "O", "random")], turns=[],
                   returns=[1.0, -1.0])


def test_json_lines_skip_blanks_and_a_torn_tail_but_name_a_bad_middle_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n{"b": 2}\n{"c": ')
    assert list(read_json_lines(p)) == [(1, {"a": 1}), (3, {"b": 2})]
    assert list(read_json_lines(p, limit_bytes=9)) == [(1, {"a": 1})]  # '{"a": 1}\n' is 9 bytes
    with pytest.raises(ValueError, match=r"a\.jsonl:4: not valid JSON"):  # input data: a torn tail is an error
        list(read_json_lines(p, torn_tail=False))
    p.write_text('{"a": 1}\n{"c": \n{"b": 2}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: not valid JSON"):
        list(read_json_lines(p))
    p.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: expected a JSON object, got list"):
        list(read_json_lines(p))


def test_one_rule_for_commit_markers_however_they_are_spelled(tmp_path):
    p = tmp_path / "episodes.jsonl"
    p.write_text(_ep(0).to_json() + '\n{"commit": 1, "episodes": 1}\n{"episodes": 2, "commit": 2}\n'
                 + _ep(1).to_json() + "\n" + _ep(2).to_json()[:30])
    assert [e.seed for e in read_jsonl(p)] == [0, 1]
    p.write_text(_ep(0).to_json() + '\n{"seed": 3}\n')
    with pytest.raises(ValueError, match=r"episodes\.jsonl:2: not an episode record"):
        list(read_jsonl(p))


def test_atomic_write_and_directory_leave_the_old_or_the_complete_new(tmp_path):
    f = tmp_path / "sub" / "c.json"
    atomic_write(f, "one")
    atomic_write(f, b"two")
    assert f.read_text() == "two" and sorted(x.name for x in f.parent.iterdir()) == ["c.json"]
    d = tmp_path / "iter-1"
    with atomic_directory(d) as tmp:
        (tmp / "w.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_directory(d) as tmp:
            (tmp / "w.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-save")
    assert (d / "w.bin").read_bytes() == b"old" and sorted(x.name for x in tmp_path.iterdir()) == ["iter-1", "sub"]
    with atomic_directory(d) as tmp:
        (tmp / "x.bin").write_bytes(b"new")
    assert sorted(x.name for x in d.iterdir()) == ["x.bin"]


async def test_map_concurrent_bounds_the_calls_and_keeps_item_order():
    running, peak, finished = 0, 0, []

    async def work(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - x))  # later items finish first
        running -= 1
        return x * x

    out = await map_concurrent(work, range(6), 3, on_result=finished.append)
    assert out == [0, 1, 4, 9, 16, 25] and peak == 3
    # items 0-2 start together; item 2 sleeps least and is reported first; every result is reported once
    assert finished[0] == 4 and sorted(finished) == out
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        await map_concurrent(work, [1], 0)


async def test_map_concurrent_stops_the_waiting_calls_after_an_error():
    started = []

    async def work(x: int) -> int:
        started.append(x)
        if x == 0:
            raise KeyError("boom")
        await asyncio.sleep(0.01)
        return x

    with pytest.raises(KeyError):
        await map_concurrent(work, range(10), 2)
    await asyncio.sleep(0.05)
    assert len(started) < 10
