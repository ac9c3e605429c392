"""Clear errors: an unreachable endpoint is one line naming it and what to run; the LLM agent retries through the
openai client's own `max_retries`."""

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from stratagem.agents.llm import LLMAgent
from stratagem.cli import unreachable_endpoint
from stratagem.games.core import Observation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMPLETION = {"id": "x", "object": "chat.completion", "created": 0, "model": "base",
              "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                           "message": {"role": "assistant", "content": "<answer>A</answer>"}}]}


class _Flaky(BaseHTTPRequestHandler):
    """Answers the first `fail` requests with 503, then with a chat completion."""

    fail = 1
    requests: list[str] = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append(self.path)
        ok = len(type(self).requests) > type(self).fail
        body = json.dumps(COMPLETION if ok else {"error": {"message": "busy"}}).encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("retry-after-ms", "10")  # the client's backoff, kept short
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky():
    _Flaky.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


OBS = Observation(game="g", seat=0, role="x", phase="play", messages=[{"role": "user", "content": "move"}],
                  legal_actions=["A"])


async def test_llm_agent_retries_with_the_client_and_gives_up_after_retries(flaky):
    _Flaky.fail = 1
    agent = LLMAgent(base_url=flaky, model="base", logprobs=False, retries=1)
    reply = await agent.act(OBS)
    await agent.aclose()
    assert reply.text == "<answer>A</answer>" and _Flaky.requests == ["/v1/chat/completions"] * 2
    _Flaky.requests, _Flaky.fail = [], 5
    agent = LLMAgent(base_url=flaky, model="base", logprobs=False, retries=2)
    with pytest.raises(openai.InternalServerError):
        await agent.act(OBS)
    await agent.aclose()
    assert len(_Flaky.requests) == 3  # one request and two retries


async def test_unreachable_endpoint_is_found_inside_wrapping_errors():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    agent = LLMAgent(base_url=url, model="base", retries=0)
    with pytest.raises(openai.APIConnectionError) as e:
        await agent.act(OBS)
    await agent.aclose()
    assert unreachable_endpoint(e.value) == (url, "connection failed")
    try:
        try:
            raise e.value
        except openai.APIConnectionError as inner:
            raise RuntimeError("tictactoe seed 0: server error on every try") from inner
    except RuntimeError as outer:
        assert unreachable_endpoint(ExceptionGroup("rollout", [ValueError("other"), outer])) == \
            (url, "connection failed")
    assert unreachable_endpoint(ValueError("no endpoint involved")) is None


def test_play_with_the_server_down_is_one_line_and_non_zero():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    r = subprocess.run([sys.executable, "-c", "from stratagem.cli import main; main()", "play", "tictactoe",
                        "--players", "llm:base,random", "--base-url", url],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("error")]
    assert errors == [f"error: cannot reach the model endpoint {url} (connection failed); start a server with "
                      "`stratagem serve` and pass its URL with --base-url (default 127.0.0.1:8000/v1), or leave "
                      "--base-url out to let the command start one"]
    assert len((r.stdout + r.stderr).splitlines()) < 10 and "Traceback" not in r.stderr


def test_eval_mas_exits_non_zero_when_questions_failed(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": "What is 2+3?", "answer": "2+3=5\n#### 5"}) + "\n")
    url = f"http://127.0.0.1:{_free_port()}/v1"
    r = subprocess.run([sys.executable, "-m", "stratagem.cli", "eval", "mas", "--benchmark", "gsm8k", "--data",
                        str(data), "--base-url", url, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    summary = json.loads(r.stdout.strip().splitlines()[-1])  # the results are still printed
    assert summary["models"]["base"]["errors"] == 1 and summary["models"]["base"]["n"] == 1
    assert r.stderr.strip().splitlines()[-1] == (f"error: 1 question(s) failed on the endpoint {url} (see 'error' in "
                                                 "the JSONL); rerun with --out to resume")


def test_train_with_the_server_down_fails_before_the_run_starts(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    r = subprocess.run([sys.executable, "-m", "stratagem.cli", "train", "--base-url", url, "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith(f"error: cannot reach the model endpoint {url} "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()  # no run directory, no model
