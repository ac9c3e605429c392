"""Several endpoints as one: parsing, load spreading, a dead endpoint's games moved (unit tests with a scripted
pool), then the real thing: two vLLM servers, a training iteration, one server killed mid-rollout."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import httpx
import pytest

from stratagem.endpoints import EndpointError, EndpointPool, NoEndpointsLeft, parse_endpoints
from stratagem.integrations.servers import install_adapter

A, B = "http://127.0.0.1:18001/v1", "http://127.0.0.1:18002/v1"


def test_parse_endpoints_lists_commas_and_files(tmp_path):
    f = tmp_path / "urls.txt"
    f.write_text(f"# two servers\n{A}/\n\n{B}  # the second\n")
    assert parse_endpoints(f"{A}, {B}") == [A, B]
    assert parse_endpoints([A, B + "/"]) == [A, B]
    assert parse_endpoints(str(f)) == [A, B] and parse_endpoints("@" + str(f)) == [A, B]
    assert parse_endpoints(None) == [] and parse_endpoints([]) == []
    with pytest.raises(EndpointError, match="listed twice"):
        parse_endpoints([A, A])
    with pytest.raises(EndpointError, match="neither an http"):
        parse_endpoints("127.0.0.1:8000")
    f.write_text("localhost:8000\n")
    with pytest.raises(EndpointError, match=r"urls.txt:1: 'localhost:8000' is not an http"):
        parse_endpoints(str(f))


def test_eval_commands_take_repeated_and_listed_base_urls(tmp_path):
    import typer

    from stratagem.integrations.cli import endpoint

    f = tmp_path / "more.txt"
    f.write_text("http://127.0.0.1:18003/v1\n")
    with endpoint([A, f"{B},{f}"], []) as url:
        assert url == f"{A},{B},http://127.0.0.1:18003/v1"  # what LLMAgent routes over
    with pytest.raises(typer.BadParameter, match="listed twice"):
        with endpoint([A, A], []):
            pass


class ScriptedPool(EndpointPool):
    """Health is a set of URLs instead of an HTTP probe."""

    def __init__(self, urls, up):
        super().__init__(urls)
        self.up = up

    async def healthy(self, ep):
        return ep.url in self.up

    def healthy_sync(self, ep):
        return ep.url in self.up


def test_pick_prefers_the_least_loaded_endpoint():
    pool = ScriptedPool([A, B], {A, B})
    a, b = pool.endpoints
    assert pool.pick() is a  # tie: list order
    a.in_flight, a.started = 1, 1
    assert pool.pick() is b
    b.in_flight, b.started = 1, 1
    assert pool.pick() is a  # tie on load and starts
    a.in_flight = 3
    assert pool.pick() is b
    b.alive = False
    assert pool.pick() is a
    a.alive = False
    with pytest.raises(NoEndpointsLeft, match="every endpoint is down"):
        pool.pick()


def test_dead_endpoints_games_are_replayed_whole_elsewhere():
    """B dies after its first finished game: its games in flight fail, are started again from scratch on A, and
    every game is delivered exactly once (a half-played game never reaches on_result)."""
    pool = ScriptedPool([A, B], {A, B})
    starts: list[tuple[int, str]] = []
    delivered: list[tuple[int, str]] = []

    async def play_one(url, i):
        starts.append((i, url))
        await asyncio.sleep(0.01 * (1 + i % 3))
        if url == B and (i, url) != starts_on_b[0]:
            pool.up.discard(B)  # the server is gone
            raise httpx.ConnectError("connection refused")
        return {"game": i, "moves": [f"{i}-{m}" for m in range(3)]}

    starts_on_b: list[tuple[int, str]] = []
    orig = play_one

    async def tracked(url, i):
        if url == B and not starts_on_b:
            starts_on_b.append((i, url))
        return await orig(url, i)

    results = asyncio.run(pool.run(10, tracked, concurrency=4, on_result=lambda r, url: delivered.append((r["game"], url))))
    assert [r["game"] for r in results] == list(range(10))
    assert sorted(g for g, _ in delivered) == list(range(10))  # each game once
    assert sum(1 for _, u in delivered if u == B) == 1  # B finished exactly its first game
    assert pool.stats.moved >= 1 and not pool.endpoints[1].alive
    moved = [i for i, u in starts if u == B and (i, u) != starts_on_b[0]]
    assert moved and all((i, A) in starts for i in moved)  # replayed on A from the start


def test_transient_errors_retry_and_bugs_raise():
    pool = ScriptedPool([A], {A})
    pool.retry_delay = 0.0
    calls = {"n": 0}

    async def flaky(url, i):
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("slow")
        return i

    assert asyncio.run(pool.run(1, flaky)) == [0] and pool.stats.retried == 1 and pool.stats.moved == 0

    async def bug(url, i):
        raise KeyError("a bug, not the server")

    with pytest.raises(KeyError):
        asyncio.run(pool.run(2, bug))
    pool.up.clear()  # the same failure with the server gone: the game moves, and no endpoint is left
    with pytest.raises(NoEndpointsLeft):
        asyncio.run(pool.run(2, bug))


class FakeServer:
    def __init__(self, url, gap=0.0):
        self.url, self.gap, self.loaded = url, gap, []

    def load_adapter(self, name, path, replace=False):
        self.loaded.append(name)
        return name

    def verify_adapter(self, name, path=None):
        from stratagem.integrations.vllm_server import AdapterVerificationError

        if self.gap > 0.1:
            raise AdapterVerificationError(f"{name} does not match on {self.url}")
        return {"mean_abs_diff": self.gap, "max_abs_diff": 2 * self.gap}


def test_install_adapter_everywhere_skips_the_dead_and_takes_back_the_revived(tmp_path):
    log = tmp_path / "sync.log"
    adapter = tmp_path / "iter-1"
    adapter.mkdir()
    pool = ScriptedPool([A, B], {A, B})
    servers = [FakeServer(A, 1e-4), FakeServer(B, 3e-4)]
    out = install_adapter(pool, servers, "iter-1", adapter, sync=f"echo {{host}} {{path}} >> {log}")
    assert out == {"endpoints": 2.0, "mean_abs_diff": 3e-4, "max_abs_diff": 6e-4}  # the worst endpoint
    assert log.read_text().split("\n")[:2] == [f"127.0.0.1 {adapter}"] * 2
    pool.up.discard(B)
    assert install_adapter(pool, servers, "iter-2", adapter)["endpoints"] == 1.0 and not pool.endpoints[1].alive
    pool.up.add(B)  # restarted by its owner: it gets the current adapter and rejoins
    assert install_adapter(pool, servers, "iter-3", adapter)["endpoints"] == 2.0 and pool.endpoints[1].alive
    assert servers[1].loaded == ["iter-1", "iter-3"]
    servers[1].gap = 0.5  # a live endpoint serving something else is an error, not a skip
    with pytest.raises(Exception, match="does not match"):
        install_adapter(pool, servers, "iter-4", adapter)
    pool.up.clear()
    with pytest.raises(NoEndpointsLeft, match="reached no endpoint"):
        install_adapter(pool, servers, "iter-5", adapter)


# ---- two real vLLM servers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_servers(model_path):
    """Two servers started at once. Each is started, and later stopped, by a thread that lives as long as its
    server: the process guard ties a server's life to the thread that spawned it (PR_SET_PDEATHSIG)."""
    from stratagem.integrations.vllm_server import VLLMServer

    servers = [VLLMServer(model=model_path, max_lora_rank=8, max_loras=2, kv_cache_gib=1) for _ in range(2)]
    errors: list[BaseException] = []
    ready = [threading.Event() for _ in servers]
    done = threading.Event()

    def keep(s, up):
        try:
            s.start()
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)
        finally:
            up.set()
        done.wait()
        s.stop()

    threads = [threading.Thread(target=keep, args=(s, up), daemon=True) for s, up in zip(servers, ready)]
    for t in threads:
        t.start()
    for up in ready:
        up.wait()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)


@pytest.mark.vllm
def test_routed_requests_spread_over_both_and_skip_a_dead_one(two_servers):
    """Evaluation's routing (an agent whose base_url lists two endpoints): concurrent requests reach both servers;
    a request to an endpoint that is down goes to the other one (here B's URL with a port nothing listens on)."""
    from stratagem.agents.llm import LLMAgent, LLMAgentConfig
    from stratagem.games.core import Observation
    from stratagem.integrations.vllm_server import free_port

    a, b = two_servers
    obs = Observation(game="t", seat=0, role="r", phase="p", messages=[{"role": "user", "content": "Say hi."}],
                      legal_actions=[])

    async def ask(urls: str, n: int):
        agent = LLMAgent(LLMAgentConfig(base_url=urls, max_tokens=4, logprobs=False, retries=0))
        try:
            replies = await asyncio.gather(*(agent.act(obs) for _ in range(n)))
        finally:
            await agent.aclose()
        return agent._client.pool, replies

    pool, replies = asyncio.run(ask(f"{a.base_url},{b.base_url}", 8))
    assert len(replies) == 8 and pool.stats.per_endpoint == {a.base_url: 4, b.base_url: 4}
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pool, replies = asyncio.run(ask(f"{dead},{a.base_url}", 4))
    assert len(replies) == 4 and pool.stats.per_endpoint == {a.base_url: 4} and pool.stats.moved >= 1
    assert not pool.endpoints[0].alive


@pytest.mark.vllm
@pytest.mark.slow
def test_two_endpoints_survive_a_server_killed_mid_run(two_servers, model_path, tmp_path):
    """An adapter is installed and verified on both servers; then a training iteration plays on both, server B is
    killed when it finished its first game, B's games in flight are replayed on A from their start, the
    iteration's episodes are all there, each once and whole, and the new adapter is installed on A alone."""
    from helpers_lora import make_adapter

    from stratagem.integrations.servers import EndpointGroup
    from stratagem.training.loop import RunConfig, default_rollout, run_training

    a, b = two_servers
    group = EndpointGroup([a.base_url, b.base_url], model_path=model_path)
    check = group.install("probe", make_adapter(model_path, tmp_path / "probe", seed=1, rank=4))
    assert check["endpoints"] == 2.0 and check["mean_abs_diff"] < 1e-3  # verified on both
    assert "probe" in a.models() and "probe" in b.models()

    cfg = RunConfig()
    cfg.loop.games = ["tictactoe"]
    cfg.loop.iterations = 1
    cfg.loop.episodes_per_iteration = 8
    cfg.loop.concurrency = 4
    cfg.loop.model = model_path
    cfg.loop.policy_weights = "lora"
    cfg.trainer.rank = 4
    cfg.trainer.minibatches = 1
    cfg.trainer.track_kl = False
    inner = default_rollout(cfg, group.base_url, group.pool)
    seen: list[str] = []
    killed = {}

    async def rollout(game, model, n, seed, on_episode):
        def watch(ep):
            seen.append(ep.metrics["endpoint"])
            if ep.metrics["endpoint"] == b.base_url and not killed:
                killed["after"] = len(seen)
                killed["b_in_flight"] = group.pool.endpoints[1].in_flight
                os.killpg(b.proc.pid, signal.SIGKILL)  # a crash, mid-rollout: B still has games in flight
            on_episode(ep)

        return await inner(game, model, n, seed, watch)

    store = run_training(cfg, tmp_path / "run", server=group, rollout=rollout, progress=False)

    assert killed, "server B finished no game"
    assert killed["b_in_flight"] >= 1  # games were cut off mid-play on B ...
    assert group.pool.stats.moved >= killed["b_in_flight"]  # ... and replayed on A
    assert set(seen) == {a.base_url, b.base_url} and seen.count(b.base_url) == 1  # episodes from both endpoints
    assert len(seen) == 8  # nothing lost
    eps = list(store.episodes())
    assert len(eps) == 8 and sorted(e.seed for e in eps) == sorted({e.seed for e in eps})  # each game once
    for e in eps:  # whole games: every model turn carries its sampled tokens and the game reached its end
        assert e.end_reason and e.turns and all(t.completion_token_ids for t in e.turns)
    assert not group.pool.endpoints[1].alive
    (m,) = store.metrics()
    assert m["episodes"] == 8 and m["games_moved"] >= 1
    assert m["verify/endpoints"] == 1.0 and m["verify/mean_abs_diff"] < 1e-3  # iter-1 on A alone, verified
    assert m[f"endpoint_games/{b.base_url}"] == 1.0 and m[f"endpoint_games/{a.base_url}"] == 7.0
    assert "iter-1" in a.models()
