"""The REST calls Stratagem makes to a vLLM server beyond the OpenAI API: health, models, runtime LoRA loading, sleep
and wake-up, the weight reload and the greedy log-probs of the adapter check, each a method, all through one status
check (`call`). No process handling here (vllm_server.VLLMServer) and no adapter bookkeeping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx

BASE_NAME = "base"  # the served name of the base model (and of a merged policy, on a server that reloads weights)


class ServerError(RuntimeError):
    """The server could not start, died, or refused a request."""


class AdapterError(ServerError):
    """A LoRA adapter that cannot be loaded (bad directory, rank too high, refused by vLLM)."""


class VLLMClient:
    """One vLLM server's REST API at `base_url` (ending in /v1). `alive`, when given, is asked after a failed
    request so that the error says whether the server is down."""

    def __init__(self, base_url: str, api_key: str | None = None, alive: Callable[[], bool] | None = None):
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        self.api_key = api_key
        self._alive = alive

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def request(self, method: str, path: str, *, timeout: float = 120, **kw: Any) -> httpx.Response:
        """`method path` (from the server's root); a server that does not answer is a ServerError."""
        try:
            return httpx.request(method, self.root_url + path, headers=self.headers, timeout=timeout, **kw)
        except httpx.HTTPError as e:
            down = self._alive is not None and not self._alive()
            raise ServerError(f"vLLM server at {self.root_url} did not answer {method} {path}: {e!r}"
                              + (" (the server is down)" if down else "")) from e

    def call(self, method: str, path: str, what: str, *, error: type[ServerError] = ServerError, hint: str = "",
             limit: int = 300, **kw: Any) -> httpx.Response:
        """A request that must succeed: anything but HTTP 200 raises `error` saying `what` failed, with vLLM's
        answer and `hint`."""
        r = self.request(method, path, **kw)
        if r.status_code != 200:
            raise error(f"{what}: HTTP {r.status_code} {r.text[:limit]}{hint}")
        return r

    def healthy(self, timeout: float = 5) -> bool:
        """GET /health answers 200."""
        try:
            return httpx.get(self.root_url + "/health", headers=self.headers, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self, timeout: float = 5) -> bool:
        """GET /v1/models answers 200 (the API is up, not just the process)."""
        try:
            return httpx.get(self.base_url + "/models", headers=self.headers, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> list[str]:
        return [m["id"] for m in self.call("GET", "/v1/models", "GET /v1/models failed").json()["data"]]

    def load_lora(self, name: str, path: str) -> None:
        self.call("POST", "/v1/load_lora_adapter", f"vLLM refused adapter {name!r} from {path}", error=AdapterError,
                  limit=500, json={"lora_name": name, "lora_path": path})

    def unload_lora(self, name: str) -> None:
        self.call("POST", "/v1/unload_lora_adapter", f"vLLM could not unload adapter {name!r}", error=AdapterError,
                  json={"lora_name": name})

    def sleep(self, level: int) -> None:
        self.call("POST", "/sleep", "vLLM refused to sleep", params={"level": level}, timeout=600,
                  hint=" (was it started with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1?)")

    def wake_up(self) -> None:
        self.call("POST", "/wake_up", "vLLM could not wake up", timeout=600)

    def is_sleeping(self) -> bool:
        return bool(self.call("GET", "/is_sleeping", "GET /is_sleeping failed").json().get("is_sleeping"))

    def reload_weights(self, weights: str | os.PathLike[str], what: str, *, reset_cache: bool = True) -> None:
        """Replace the engine's weights in place with the checkpoint at `weights` (vLLM's collective RPC; the server
        needs VLLM_SERVER_DEV_MODE=1), then drop the prefix cache, whose KV blocks came from the old weights (not
        needed after a level-2 sleep, which dropped it)."""
        self.call("POST", "/collective_rpc", f"reloading {what} failed", timeout=600,
                  json={"method": "reload_weights", "kwargs": {"weights_path": str(weights)}})
        if reset_cache:
            self.request("POST", "/reset_prefix_cache")

    def greedy_logprobs(self, model: str, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        """The tokens `model` generates greedily after `prompt_ids` (exactly max_tokens of them) and their
        log-probs, as the sampler reports them."""
        r = self.call("POST", "/v1/completions", f"greedy log-probs from {model!r} failed", json={
            "model": model, "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 0,
            "ignore_eos": True, "return_token_ids": True})
        choice = r.json()["choices"][0]
        return list(choice["token_ids"]), [float(x) for x in choice["logprobs"]["token_logprobs"]]
