"""The typed run config: dict / YAML reading with type and range checks, errors that name the dotted field, names
checked against the registries before anything starts, and the command-line flags generated from the dataclasses."""

import dataclasses
import importlib
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import yaml

from stratagem.config import (
    ConfigError,
    check,
    flag_parser,
    from_dict,
    leaf_fields,
    merge,
    missing_help,
    parse_flags,
    to_dict,
)
from stratagem.training.cli import ALIASES, train_config, train_parser
from stratagem.training.loop import RunConfig


@dataclass
class Inner:
    eps: float = field(default=0.2, metadata={"help": "A bounded number.", "min": 0.0, "max": 1.0})
    mode: str = field(default="a", metadata={"help": "A choice.", "choices": ("a", "b")})


@dataclass
class Outer:
    n: int = field(default=1, metadata={"help": "An integer.", "min": 1})
    flag: bool = field(default=False, metadata={"help": "A boolean."})
    names: list[str] = field(default_factory=lambda: ["x"], metadata={"help": "Strings."})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "A mapping."})
    limit: int | None = field(default=None, metadata={"help": "An optional integer."})
    kind: Literal["p", "q"] = field(default="p", metadata={"help": "A literal."})
    inner: Inner = field(default_factory=lambda: Inner(mode="b"), metadata={"help": "A section."})


def test_from_dict_reads_every_supported_type_and_keeps_section_defaults():
    cfg = from_dict(Outer, {"n": 3, "flag": True, "names": ["a", "b"], "extra": {"k": [1]}, "limit": 5,
                            "kind": "q", "inner": {"eps": 1}})
    assert cfg == Outer(n=3, flag=True, names=["a", "b"], extra={"k": [1]}, limit=5, kind="q",
                        inner=Inner(eps=1.0, mode="b"))  # mode keeps the parent's default "b", not Inner's "a"
    assert isinstance(cfg.inner.eps, float)  # an int is read as a float where a float is declared
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert from_dict(Outer, {"limit": None}).limit is None


@pytest.mark.parametrize("data, message", [
    ({"n": "3"}, "n: expected an integer, got '3' (str)"),
    ({"n": True}, "n: expected an integer, got True (bool)"),
    ({"n": 2.5}, "n: expected an integer, got 2.5 (float)"),
    ({"flag": "yes"}, "flag: expected true or false, got 'yes' (str)"),
    ({"names": "a,b"}, "names: expected a list of strings, got 'a,b' (str)"),
    ({"names": ["a", 2]}, "names[1]: expected a string, got 2 (int)"),
    ({"extra": [1]}, "extra: expected a mapping, got [1] (list)"),
    ({"limit": "none"}, "limit: expected an integer or null, got 'none' (str)"),
    ({"kind": "r"}, "kind: must be one of 'p', 'q', got 'r'"),
    ({"n": 0}, "n: must be >= 1, got 0"),
    ({"inner": {"eps": -1}}, "inner.eps: must be >= 0, got -1"),
    ({"inner": {"eps": 1.5}}, "inner.eps: must be <= 1, got 1.5"),
    ({"inner": {"mode": "c"}}, "inner.mode: must be one of a, b, got 'c'"),
    ({"inner": {"epss": 0.1}}, "inner.epss: unknown field of Inner; did you mean 'eps'? (expected one of eps, mode)"),
    ({"inner": 3}, "inner: expected a mapping of Inner fields, got 3 (int)"),
    ({"nn": 1}, "nn: unknown field of Outer; did you mean 'n'?"),
])
def test_from_dict_errors_name_the_dotted_field(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert str(e.value).startswith(message)


def test_check_catches_values_set_in_code():
    cfg = Outer()
    cfg.inner.eps = 2.0
    with pytest.raises(ConfigError, match=r"^inner.eps: must be <= 1, got 2$"):
        check(cfg)
    cfg.inner.eps, cfg.names = 0.5, "x"
    with pytest.raises(ConfigError, match="^names: expected a list of strings"):
        check(cfg)


def test_merge_overrides_nested_keys_and_replaces_lists():
    assert merge({"a": {"x": 1, "y": [1, 2]}, "b": 1}, {"a": {"y": [3]}, "c": 2}) == \
        {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}


def test_flag_parser_has_a_flag_for_every_leaf_field():
    parser = flag_parser(Outer, aliases={"eps": "inner.eps"})
    argv = ["--n", "4", "--flag", "--names", "a,b", "--extra", "{k: 1}", "--limit", "none", "--kind", "q",
            "--eps", "0.5", "--inner.mode", "a"]
    overrides, ns = parse_flags(parser, argv)
    assert overrides == {"n": 4, "flag": True, "names": ["a", "b"], "extra": {"k": 1}, "limit": None, "kind": "q",
                         "inner": {"eps": 0.5, "mode": "a"}}
    assert vars(ns) == {}
    assert parse_flags(parser, ["--flag", "false", "--names", '[">", "a,b"]'])[0] == \
        {"flag": False, "names": [">", "a,b"]}
    assert parse_flags(parser, [])[0] == {}  # flags left out leave the YAML values and defaults alone
    with pytest.raises(SystemExit):
        parse_flags(parser, ["--n", "many"])
    with pytest.raises(ValueError, match="alias --x: 'inner.nope' is not a field of Outer"):
        flag_parser(Outer, aliases={"x": "inner.nope"})


def test_every_run_config_field_is_a_train_flag():
    help_text = train_parser().format_help()
    paths = [p for p, *_ in leaf_fields(RunConfig)]
    assert len(paths) > 60
    for p in paths:
        assert f"--{p.replace('_', '-')} " in help_text, p
    for target in ALIASES.values():
        assert target in paths


# ---- the run config -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"loop": {"games": ["tictactoo"]}}, "loop.games[0]: unknown game 'tictactoo'; expected one of "),
    ({"loop": {"games": ["tictactoe", "tictactoe"]}}, "loop.games[1]: 'tictactoe' is listed twice"),
    ({"loop": {"games": []}}, "loop.games: must name at least one game"),
    ({"loop": {"iterations": "3"}}, "loop.iterations: expected an integer, got '3' (str)"),
    ({"loop": {"episodes_per_iteration": 2, "games": ["tictactoe", "kuhn_poker", "mini_hanabi"]}},
     "loop.episodes_per_iteration: must be >= the number of games (3), got 2"),
    ({"loop": {"algo": "maro", "episodes_per_iteration": 1}},
     "loop.episodes_per_iteration: MARO needs >= 2 episodes per mini-batch"),
    ({"loop": {"algo": "ppo"}}, "loop.algo: must be one of grpo, mars, marshal, rae, maro, got 'ppo'"),
    ({"loop": {"opponents": ["alphazero"]}}, "loop.opponents[0]: unknown agent spec 'alphazero'"),
    ({"loop": {"games": ["kuhn_poker"], "opponents": ["mcts:50"]}},
     "loop.opponents[0]: agent spec 'mcts:50': MCTS would search kuhn_poker's hidden information"),
    ({"loop": {"opponents": ["cfr"]}}, "loop.opponents[0]: agent spec 'cfr': cfr plays kuhn_poker and leduc_poker"),
    ({"loop": {"opponents": ["random", "random"]}},
     "loop.opponents: tictactoe has 2 seats, so it needs 1 opponent(s) for seats 1..; got 2"),
    ({"loop": {"policy_weights": "fast"}}, "loop.policy_weights: must be one of auto, lora, merged, got 'fast'"),
    ({"loop": {"games": ["mystery"], "policy_weights": "merged"}},
     "loop.policy_weights: policy_weights=merged is not possible here: the mystery's judge is the base model"),
    ({"loop": {"games": ["mystery"]}, "mystery": {"player_temperature": 0.8}},
     "mystery.player_temperature: the trainer scores the policy's turns at sampling.temperature=0.6, so the players"),
    ({"loop": {"games": ["mystery"], "mystery_script": "no_such_script"}},
     "loop.mystery_script: mystery script 'no_such_script' is neither a shipped script"),
    ({"loop": {"model": "./no/such/dir"}}, "loop.model: './no/such/dir' is neither a registered model"),
    ({"ppo": {"clip_eps": -1}}, "ppo.clip_eps: must be >= 0, got -1"),
    ({"trainer": {"dtype": "fp16"}}, "trainer.dtype: must be one of auto, float32, fp32, bfloat16, bf16, got 'fp16'"),
    ({"maro": {"empty_side": "none"}}, "maro.empty_side: must be one of all, skip, got 'none'"),
    ({"sampling": {"max_tokens": 0}}, "sampling.max_tokens: must be >= 1, got 0"),
    ({"rewards": {"win_bonus": 2}}, "rewards.win_bonus: unknown field of RewardConfig"),
    ({"rewards": {"length_min_tokens": 8, "length_max_tokens": 8}},
     "rewards.length_max_tokens: must exceed rewards.length_min_tokens (8), got 8"),
    ({"mystery": {"roundz": 1}}, "mystery.roundz: unknown field of MysteryConfig; did you mean 'rounds'?"),
    ({"mystery": {"rounds": -1}}, "mystery: rounds and max_reasks must be >= 0"),
    ({"lora": {}}, "lora: unknown field of RunConfig"),
])
def test_run_config_errors_name_the_field(data, message):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(data)
    assert str(e.value).startswith(message), str(e.value)


def test_run_config_sections_and_yaml_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"loop": {"games": ["kuhn_poker"], "opponents": ["cfr"]},
                               "sampling": {"temperature": 1, "stop": []}, "reply": {"open_answer": False},
                               "rewards": {"format_bonus": 0.0}, "mystery": {"rounds": 1}})
    assert (cfg.sampling.temperature, cfg.sampling.stop, cfg.reply.open_answer) == (1.0, [], False)
    assert (cfg.rewards.format_bonus, cfg.mystery.rounds) == (0.0, 1)
    assert cfg.sampling.agent_kwargs()["temperature"] == 1.0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert RunConfig.from_dict(yaml.safe_load(path.read_text())) == cfg
    cfg.loop.opponents = ["mcts:5"]  # changed in code after reading: validate sees it
    with pytest.raises(ConfigError, match=r"^loop.opponents\[0\]: agent spec 'mcts:5': MCTS"):
        cfg.validate()


def test_train_arguments_defaults_then_yaml_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("loop:\n  iterations: 5\n  seed: 3\ntrainer:\n  lr: 0.01\n")
    cfg, out, resume, _ = train_config(["--out", str(tmp_path / "run"), "--config", str(tmp_path / "c.yaml"),
                                     "--games", "tictactoe,kuhn_poker", "--iterations", "7", "--max-tokens", "16",
                                     "--loop.episodes-per-iteration", "4", "--ppo.clip_eps", "0.3", "--lr", "0.02",
                                     "--reply.open-answer", "false", "--base-url", "http://127.0.0.1:1/v1"])
    assert (out, resume) == (tmp_path / "run", False)
    assert (cfg.loop.games, cfg.loop.iterations, cfg.loop.seed, cfg.loop.episodes_per_iteration) == \
        (["tictactoe", "kuhn_poker"], 7, 3, 4)
    assert (cfg.sampling.max_tokens, cfg.ppo.clip_eps, cfg.trainer.lr, cfg.reply.open_answer) == (16, 0.3, 0.02, False)
    assert cfg.loop.base_url == "http://127.0.0.1:1/v1"
    (tmp_path / "bad.yaml").write_text("ppo:\n  clip_eps: -1\n")
    with pytest.raises(ConfigError, match="^ppo.clip_eps: must be >= 0, got -1$"):
        train_config(["--out", str(tmp_path / "x"), "--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "list.yaml").write_text("- loop\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping of sections, got list"):
        train_config(["--out", str(tmp_path / "x"), "--config", str(tmp_path / "list.yaml")])


def test_resume_takes_only_iterations_and_base_url(tmp_path):
    from stratagem.training.run_store import RunStore

    RunStore(tmp_path / "run").create(RunConfig.from_dict({"loop": {"seed": 9}}).to_dict())
    cfg, _, resume, _ = train_config(["--out", str(tmp_path / "run"), "--resume", "--iterations", "4"])
    assert resume and (cfg.loop.seed, cfg.loop.iterations) == (9, 4)
    with pytest.raises(ConfigError, match=r"only loop.iterations, loop.base_url, loop.async_rollout, "
                                          r"loop.max_staleness may be given with it \(got loop.seed, trainer.lr\)"):
        train_config(["--out", str(tmp_path / "run"), "--resume", "--seed", "1", "--lr", "0.1"])


def test_train_command_fails_before_anything_starts(tmp_path):
    """The acceptance check: a misspelt game is reported by name and nothing is created (no model, no server)."""
    out = tmp_path / "X"
    r = subprocess.run([sys.executable, "-m", "stratagem.cli", "train", "--games", "tictactoo", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: loop.games[0]: unknown game 'tictactoo'; expected one of " + r.stderr.split("expected one of ")[1]
        .strip()]
    assert "tictactoe" in r.stderr and not out.exists()


# ---- every config class of the package ------------------------------------------------------------------------

def _config_classes() -> list[type]:
    import stratagem
    import stratagem.agents
    import stratagem.games
    import stratagem.integrations
    import stratagem.training

    found: dict[str, type] = {}
    for pkg in (stratagem, stratagem.agents, stratagem.games, stratagem.training, stratagem.integrations):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            mod = importlib.import_module(info.name)
            for v in vars(mod).values():
                if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == mod.__name__ \
                        and v.__name__.endswith(("Config", "Format")):
                    found[f"{v.__module__}.{v.__name__}"] = v
    return list(found.values())


def test_every_config_field_has_help_and_a_valid_default():
    classes = _config_classes()
    names = {c.__name__ for c in classes}
    assert {"RunConfig", "LoopConfig", "SamplingConfig", "ReplyFormat", "RewardConfig", "MysteryConfig",
            "TrainerConfig", "ServerConfig", "LLMAgentConfig"} <= names
    for cls in classes:
        assert missing_help(cls) == [], cls
        check(cls())  # the defaults satisfy the declared types and ranges


def test_the_flags_of_earlier_releases_still_work(tmp_path):
    argv = ["--algo", "grpo", "--games", "tictactoe,kuhn_poker", "--iterations", "3", "--episodes-per-iteration",
            "6", "--model", "default", "--base-url", "http://127.0.0.1:1/v1", "--opponents", "random", "--seed", "4",
            "--concurrency", "2", "--max-tokens", "32", "--lr", "0.005", "--rank", "4", "--policy-weights", "lora",
            "--config", str(tmp_path / "c.yaml"), "--resume", "--out", str(tmp_path / "run")]
    overrides, ns = parse_flags(train_parser(), argv)
    assert overrides == {"loop": {"algo": "grpo", "games": ["tictactoe", "kuhn_poker"], "iterations": 3,
                                  "episodes_per_iteration": 6, "model": "default", "base_url": "http://127.0.0.1:1/v1",
                                  "opponents": ["random"], "seed": 4, "concurrency": 2, "policy_weights": "lora"},
                         "sampling": {"max_tokens": 32}, "trainer": {"lr": 0.005, "rank": 4}}
    assert (ns.config, ns.resume, ns.out) == (tmp_path / "c.yaml", True, tmp_path / "run")


async def test_mystery_players_sample_at_the_trainers_temperature(monkeypatch):
    """The trainer scores the policy's turns at sampling.temperature; the mystery's training rollout samples its
    players at the same temperature (a mismatch would bias every PPO ratio)."""
    import importlib

    from stratagem.games.registry import get_game_spec
    from stratagem.training.loop import rollout_job

    mystery_rollout = importlib.import_module("stratagem.games.mystery.rollout")

    seen = {}

    async def collect(script, n, **kw):
        seen.update(kw["config"].__dict__, script=script)
        return []

    monkeypatch.setattr(mystery_rollout, "collect_mystery_episodes", collect)
    cfg = RunConfig.from_dict({"loop": {"games": ["mystery"], "mystery_script": "lighthouse"},
                               "sampling": {"temperature": 0.7}, "mystery": {"rounds": 1}})
    await get_game_spec("mystery").rollout(rollout_job(cfg, "mystery", "iter-1", 2, 0, "http://x/v1"))
    assert seen["player_temperature"] == 0.7 and cfg.mystery.player_temperature is None
    assert seen["rounds"] == 1 and seen["script"] == "lighthouse"  # the run's own section and script, typed



def test_a_think_answer_budget_that_bytes_can_overrun_is_warned_about(caplog):
    """constrain think_answer bounds reasoning in characters; max_tokens counts tokens, and a character can be four
    byte tokens: a budget below 4 x the characters + the tags is said before the run (40 chars in 64 tokens once
    ended a reply before its answer)."""
    def warned(max_tokens, chars):
        caplog.clear()
        RunConfig.from_dict({"reply": {"think": True}, "sampling": {"constrain": "think_answer", "stop": [],
                                                                     "max_tokens": max_tokens,
                                                                     "constrain_think_chars": chars}})
        return [r.getMessage() for r in caplog.records if "think_answer reply short" in r.getMessage()]

    assert warned(64, 40) and "160 byte tokens" in warned(64, 40)[0]
    assert warned(128, 16) == [] and warned(4096, 200) == []
