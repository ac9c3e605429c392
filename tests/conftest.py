"""Shared fixtures. Tests marked `vllm` share one real vLLM server per session, serving the default model.

Set STRATAGEM_TEST_BASE_URL to reuse a server that is already running (it must serve the default model as
`base`, with LoRA and runtime adapter loading enabled); otherwise the session starts its own on a free port."""

from __future__ import annotations

import os

import pytest

# MIRAGE's folder layout in miniature: the `en` and `zh` fixtures
pytest_plugins = ["mirage_scripts"]


@pytest.fixture(scope="session")
def model_path() -> str:
    from stratagem.models import fetch

    return str(fetch())


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A tiny random model of the default model's architecture (Llama): for tests of mechanisms, not of the model."""
    from training_fakes import tiny_model

    return str(tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny(tiny_model_path) -> str:
    return tiny_model_path


@pytest.fixture(scope="session")
def vllm_server(model_path):
    from stratagem.integrations.vllm_server import VLLMServer

    url = os.environ.get("STRATAGEM_TEST_BASE_URL")
    if url:
        yield VLLMServer.attach(url, model_path=model_path)
        return
    with VLLMServer(model=model_path, max_lora_rank=16, max_loras=2) as srv:
        yield srv
