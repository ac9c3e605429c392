"""The server section of the run config: vLLM flags for memory share, parallelism and sleep mode."""

from __future__ import annotations

import pytest

from stratagem.integrations.vllm_server import COLOCATED_GPU_MEMORY, ServerConfig, ServerError, VLLMServer


def _flags(cmd: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, a in enumerate(cmd):
        if a.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) and not cmd[i + 1].startswith("--") else None
            out[a] = nxt
    return out


def test_parallelism_and_memory_flags(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    srv = VLLMServer(ServerConfig(model=str(tmp_path), port=1234, tensor_parallel_size=2, data_parallel_size=4,
                                  gpu_memory_utilization=0.3))
    f = _flags(srv.command())
    assert f["--tensor-parallel-size"] == "2" and f["--data-parallel-size"] == "4"
    assert f["--gpu-memory-utilization"] == "0.3"
    plain = _flags(VLLMServer(ServerConfig(model=str(tmp_path), port=1234)).command())
    assert "--tensor-parallel-size" not in plain and "--enable-sleep-mode" not in plain
    assert "--gpu-memory-utilization" not in plain  # vLLM's own default


def test_colocated_gpu_gets_the_small_share_and_sleep_mode(tmp_path, monkeypatch):
    import torch

    (tmp_path / "config.json").write_text("{}")
    colocated = ServerConfig(model=str(tmp_path), port=1234, colocated=True)
    assert VLLMServer(colocated).gpu_memory_utilization is None or torch.cuda.is_available()  # CPU: no GPU flags
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    srv = VLLMServer(colocated)
    f = _flags(srv.command())
    assert srv.sleep_enabled and "--enable-sleep-mode" in f
    assert f["--gpu-memory-utilization"] == str(COLOCATED_GPU_MEMORY) == "0.4"
    alone = VLLMServer(ServerConfig(model=str(tmp_path), port=1234))  # a GPU of its own: no sleep, vLLM's share
    assert not alone.sleep_enabled and alone.gpu_memory_utilization is None
    off = VLLMServer(ServerConfig(model=str(tmp_path), port=1234, colocated=True, sleep_mode="off"))
    assert not off.sleep_enabled
    assert not VLLMServer.attach("http://127.0.0.1:1/v1").sleep_enabled  # someone else's server


def test_sleep_mode_on_needs_a_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ServerError, match="sleep_mode=on needs a CUDA GPU"):
        _ = VLLMServer(ServerConfig(sleep_mode="on")).sleep_enabled


def test_run_config_has_a_checked_server_section():
    from stratagem.training.loop import RunConfig

    cfg = RunConfig.from_dict({"server": {"tensor_parallel_size": 2, "sleep_mode": "off"}})
    assert cfg.server.tensor_parallel_size == 2 and cfg.to_dict()["server"]["sleep_mode"] == "off"
    with pytest.raises(ValueError, match="server.tensor_parallel_size"):
        RunConfig.from_dict({"server": {"tensor_parallel_size": 0}})
    with pytest.raises(ValueError, match="server.sleep_mode"):
        RunConfig.from_dict({"server": {"sleep_mode": "sometimes"}})


def test_sleep_and_wake_call_vllms_endpoints(monkeypatch):
    """The HTTP calls of a sleep / wake cycle (vLLM's dev endpoints), level 1 and level 2 (weights read again)."""
    import httpx

    calls = []

    def fake(method, url, headers=None, timeout=None, **kw):
        calls.append((method, url.split("127.0.0.1:1")[1], kw.get("params"), (kw.get("json") or {}).get("method")))
        body = {"is_sleeping": False} if url.endswith("/is_sleeping") else {}
        return httpx.Response(200, json=body, request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", fake)
    srv = VLLMServer.attach("http://127.0.0.1:1/v1", model_path="/models/m")
    srv.sleep()
    srv.wake_up()
    assert calls == [("POST", "/sleep", {"level": 1}, None), ("POST", "/wake_up", None, None),
                     ("GET", "/is_sleeping", None, None)]
    calls.clear()
    srv.sleep(2)
    srv.wake_up()
    assert calls[0] == ("POST", "/sleep", {"level": 2}, None)
    assert calls[-1] == ("POST", "/collective_rpc", None, "reload_weights")


def test_wake_up_that_leaves_it_asleep_is_an_error(monkeypatch):
    import httpx

    def fake(method, url, headers=None, timeout=None, **kw):
        return httpx.Response(200, json={"is_sleeping": True}, request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", fake)
    with pytest.raises(ServerError, match="still reports is_sleeping"):
        VLLMServer.attach("http://127.0.0.1:1/v1").wake_up()
