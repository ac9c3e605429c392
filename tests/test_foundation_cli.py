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
