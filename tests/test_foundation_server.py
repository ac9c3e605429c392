"""The real vLLM server: runtime LoRA loading, verification, bad adapters, a dying server, no orphans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from helpers_lora import make_adapter

from stratagem.integrations.vllm_server import (
    AdapterError,
    AdapterVerificationError,
    ServerError,
    VLLMServer,
    group_alive,
    port_in_use,
)

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def adapters(model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return make_adapter(model_path, root / "a", seed=1), make_adapter(model_path, root / "b", seed=2)


def _complete(srv: VLLMServer, model: str) -> str:
    r = httpx.post(srv.base_url + "/completions", json={"model": model, "prompt": "1, 2, 3,", "max_tokens": 4,
                                                       "temperature": 0}, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


def test_two_runtime_adapters_are_listed_and_verified(vllm_server, adapters):
    a, b = adapters
    tag = f"fa{os.getpid()}"
    vllm_server.load_adapter(f"{tag}-a", a)
    vllm_server.load_adapter(f"{tag}-b", b)
    models = vllm_server.models()
    assert {"base", f"{tag}-a", f"{tag}-b"} <= set(models)
    for name, path in ((f"{tag}-a", a), (f"{tag}-b", b)):
        gaps = vllm_server.verify_adapter(name, path)
        assert gaps["adapter_vs_base_served"] > 10 * gaps["mean_abs_diff"]
    # loading new weights under a name in use is refused: versions get new names
    with pytest.raises(AdapterError, match="already loaded"):
        vllm_server.load_adapter(f"{tag}-a", b)


def test_a_different_adapter_under_the_expected_name_fails_verification(vllm_server, adapters, tmp_path):
    a, b = adapters
    impostor = tmp_path / "looks-like-a"
    shutil.copytree(b, impostor)
    name = f"fw{os.getpid()}"
    vllm_server.load_adapter(name, impostor)
    with pytest.raises(AdapterVerificationError, match=rf"adapter '{name}' on the server does not match .*a"):
        vllm_server.verify_adapter(name, a)


def test_bad_adapters_get_clear_errors_and_the_server_keeps_serving(vllm_server, model_path, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        vllm_server.load_adapter("ghost", tmp_path / "missing")
    (tmp_path / "not-lora").mkdir()
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        vllm_server.load_adapter("notlora", tmp_path / "not-lora")
    big = make_adapter(model_path, tmp_path / "big", seed=3, rank=32)
    if vllm_server.owned:
        with pytest.raises(AdapterError, match="rank 32"):
            vllm_server.load_adapter("big", big)
    else:  # an attached server's limit is unknown here: vLLM itself must refuse it
        with pytest.raises(AdapterError, match="refused adapter 'big'"):
            vllm_server.load_adapter("big", big)
    assert "base" in vllm_server.models()
    assert isinstance(_complete(vllm_server, "base"), str)


@pytest.mark.slow
def test_a_killed_server_is_reported_and_restarts(model_path, tmp_path):
    srv = VLLMServer(model=model_path, log_path=str(tmp_path / "vllm.log"))
    with srv:
        pgid = srv.proc.pid
        os.killpg(pgid, signal.SIGKILL)
        srv.proc.wait(timeout=30)
        assert not srv.alive()
        with pytest.raises(ServerError, match="the server is down"):
            srv.models()
        srv.restart()
        assert "base" in srv.models()
        pgid = srv.proc.pid
    assert not group_alive(pgid)
    assert not port_in_use("127.0.0.1", srv.port)


@pytest.mark.slow
def test_no_orphan_server_when_the_parent_is_killed(model_path, tmp_path):
    script = textwrap.dedent(f"""
        import time
        from stratagem.integrations.vllm_server import VLLMServer
        srv = VLLMServer(model={model_path!r}, log_path={str(tmp_path / 'child.log')!r}).start()
        print(srv.proc.pid, srv.port, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pgid, port = map(int, parent.stdout.readline().split())
    assert group_alive(pgid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 60
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(1)
    assert not group_alive(pgid), "vLLM outlived its parent"
    deadline = time.monotonic() + 30
    while port_in_use("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(1)
    assert not port_in_use("127.0.0.1", port)
