from typer.testing import CliRunner

from stratagem.cli import app


def test_model_fetch_prints_a_directory_transformers_loads():
    from transformers import AutoConfig, AutoTokenizer

    result = CliRunner().invoke(app, ["model", "fetch"])
    assert result.exit_code == 0, result.output
    path = result.output.strip().splitlines()[-1]
    assert AutoConfig.from_pretrained(path).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_serve_rejects_a_malformed_adapter_option():
    result = CliRunner().invoke(app, ["serve", "--adapter", "no-equals-sign"])
    assert result.exit_code != 0
    assert "NAME=PATH" in result.output


def test_serve_merged_takes_exactly_one_adapter_and_serves_it_under_its_name(monkeypatch):
    from stratagem.integrations import vllm_server

    assert CliRunner().invoke(app, ["serve", "--merged"]).exit_code != 0
    r = CliRunner().invoke(app, ["serve", "--merged", "--adapter", "a=/x", "--adapter", "b=/y"])
    assert r.exit_code != 0 and "one adapter" in r.output
    seen = {}

    class Started(Exception):
        pass

    def start(self):
        seen["cmd"] = self.command()
        seen["config"] = self.config
        raise Started

    monkeypatch.setattr(vllm_server.VLLMServer, "start", start)
    monkeypatch.setattr(vllm_server.VLLMServer, "__enter__", lambda self: self.start())
    r = CliRunner().invoke(app, ["serve", "--merged", "--adapter", "iter-4=/runs/a/adapters/iter-4", "--port", "8123"])
    assert isinstance(r.exception, Started)
    cfg = seen["config"]
    assert cfg.weight_reload and cfg.adapters == {} and cfg.model_aliases == ["iter-4"]
    names = seen["cmd"][seen["cmd"].index("--served-model-name") + 1:]
    assert names[:3] == ["base", names[1], "iter-4"] and names[3].startswith("--")
