"""The loop against the real server and the default model: tic-tac-toe with mars (2 iterations x 4 episodes) and
one tiny iteration of the murder mystery with maro. Mechanisms only: parameters move, adapters are served and
verified, metrics and plots are written, an interrupted run resumes without losing or doubling episodes."""

import asyncio

import pytest
import torch
from helpers_lora import make_adapter
from safetensors.torch import load_file

from stratagem.training.loop import RunConfig, run_training
from stratagem.training.report import write_report
from stratagem.training.trainer import LoRATrainer

pytestmark = pytest.mark.vllm


def _cfg(rewards=None, mystery=None, **loop):
    return RunConfig.from_dict({"loop": {"episodes_per_iteration": 4, "iterations": 2, "concurrency": 4, **loop},
                                "sampling": {"max_tokens": 24}, "rewards": rewards or {}, "mystery": mystery or {},
                                "trainer": {"lr": 1e-3, "rank": 8, "track_kl": False}})


# 0.05 off the reward per reply token beyond the 4th: coef * min(0, 1 - (L - 3) / (4 - 3))
LENGTH_PENALTY = {"length_penalty": 0.05, "length_min_tokens": 3, "length_max_tokens": 4}


def test_mars_tictactoe_two_iterations(vllm_server, model_path, tmp_path):
    # every reply of the default model may end in an illegal move (all returns equal, all advantages 0): a length
    # penalty from the 4th token on gives replies of different lengths different rewards, so the update has signal
    cfg = _cfg(algo="mars", games=["tictactoe"], model=model_path, rewards=LENGTH_PENALTY)
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    assert store.completed_iterations() == 2
    eps = list(store.episodes())
    assert len(eps) == 8 and [e.iteration for e in eps] == [1] * 4 + [2] * 4
    assert {t.adapter for e in eps for t in e.turns if e.iteration == 2} == {"iter-1"}
    served = vllm_server.models()
    for k in (1, 2):
        assert (store.adapter_dir(k) / "adapter_model.safetensors").exists() and f"iter-{k}" in served
    metrics = store.metrics()
    assert all("verify/mean_abs_diff" in m for m in metrics)  # hot-loaded and checked against transformers
    assert metrics[-1]["trained_tokens"] > 0
    # every trainable LoRA parameter moved over the run (B from its zero start, A from the second step on)
    init = LoRATrainer(model_path, cfg.trainer, seed=cfg.loop.seed).lora_parameters()
    final = load_file(str(store.adapter_dir(2) / "adapter_model.safetensors"))
    unchanged = [n for n, p in init.items() if torch.equal(p.detach(), final[n.replace(".default", "")])]
    assert unchanged == [] and len(init) == 30 * 4 * 2
    plots = write_report(store.root)
    assert {p.name for p in plots} >= {"return.png", "update.png"}

    # a kill mid-iteration 3 leaves uncommitted episodes and a torn line: resuming drops them, redoes nothing done
    with open(store.episodes_path, "a") as f:
        f.write(eps[0].to_json() + "\n" + eps[1].to_json()[:50])
    run_training(cfg, store.root, resume=True, server=vllm_server, progress=False)
    assert len(list(store.episodes())) == 8 and store.completed_iterations() == 2
    assert store.episodes_path.stat().st_size == store.checkpoint()["episodes_bytes"]


def test_maro_mystery_one_iteration(vllm_server, model_path, tmp_path):
    cfg = _cfg(algo="maro", games=["mystery"], model=model_path, iterations=1, episodes_per_iteration=2,
               mystery={"rounds": 1, "player_max_tokens": 16, "judge_max_tokens": 8, "max_reasks": 0})
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    m = store.metrics()[0]
    assert m["desirable_acts"] > 0 and m["undesirable_acts"] > 0  # faction-balanced recipients on both sides
    assert "iter-1" in vllm_server.models() and "verify/mean_abs_diff" in m


def test_merged_policy_rollouts(model_path, tmp_path):
    # a server the run manages with weight reloading: `auto` samples each policy from merged weights on the CPU
    from stratagem.integrations.vllm_server import AdapterVerificationError, VLLMServer

    cfg = _cfg(algo="mars", games=["tictactoe"], model=model_path, episodes_per_iteration=2, rewards=LENGTH_PENALTY)
    # the alias is for the evaluation below: an adapter merged into the weights answers to its own name
    with VLLMServer(model=model_path, weight_reload=True, log_path=str(tmp_path / "vllm.log"),
                    model_aliases=["iter-1"]) as srv:
        store = run_training(cfg, tmp_path / "run", server=srv, progress=False)
        eps = list(store.episodes())
        assert {t.adapter for e in eps for t in e.turns if e.iteration == 2} == {"iter-1"}
        assert srv.policy_version == "iter-2" and not any(
            m.startswith("iter-") and m != "iter-1" for m in srv.models())  # no LoRA adapter was loaded
        assert all(m["verify/max_abs_diff"] < 1e-3 for m in store.metrics())
        # the check is not vacuous: the served weights are not some other adapter merged in
        with pytest.raises(AdapterVerificationError):
            srv.verify_adapter("base", make_adapter(model_path, tmp_path / "other", seed=3))

        # `eval games` at base speed: base, then iter-1 merged in (verified), played one after the other
        from stratagem.integrations.cli import policy_switch
        from stratagem.integrations.games_eval import GamesEvalConfig, run_games_eval

        seen = []
        switch = policy_switch(srv, {"iter-1": str(store.adapter_dir(1))})
        ecfg = GamesEvalConfig(models=["base", "iter-1"], games=["tictactoe"], opponent="random", episodes=2,
                               base_url=srv.base_url, out=str(tmp_path / "eval"), concurrency=2)
        result = asyncio.run(run_games_eval(ecfg, before_model=lambda m: (switch(m), seen.append(
            (m, srv.policy_version)))))
        assert seen == [("base", None), ("iter-1", "iter-1")]  # the run's last policy replaced by the base weights
        assert {r["n"] for r in result["models"]["iter-1"]["tictactoe"].values()} == {2}
        srv.verify_adapter("base", store.adapter_dir(1))  # what answered to iter-1 last


def test_marshal_preset_two_steps_on_the_cpu(vllm_server, model_path, tmp_path):
    """`stratagem train --preset marshal --model default` at tiny sizes on the real server: the thinking protocol
    (an opened think block, MARSHAL's exact judge, the kept history, ChatML template) with structured outputs
    shaping the small model's replies as <think>..</think><answer>ACTION</answer>; the preset's trainer (LoRA on
    every linear layer, cosine schedule, 8 sequences a step, untempered log-probs) and its advantages."""
    from transformers import AutoTokenizer

    from stratagem.games.base import parse_answer
    from stratagem.training.cli import train_config

    # the regex bounds the reasoning in characters, not tokens: a character the tokenizer splits into bytes costs up to
    # 4 tokens, so 16 characters take at most 64 tokens, and the closing tags, the action and the end of turn fit in
    # the other 64 (an ASCII reply of 40 characters took 40 tokens here; 40 multi-byte ones overran 64 elsewhere)
    cfg, *_ = train_config(["--out", str(tmp_path / "run"), "--preset", "marshal", "--model", model_path,
                            "--iterations", "2", "--episodes-per-iteration", "3", "--max-tokens", "128",
                            "--sampling.constrain", "think_answer", "--sampling.constrain-think-chars", "16",
                            "--reply.context-tokens", "4096", "--server.max-model-len", "4096",
                            "--trainer.max-seq-len", "4096", "--rank", "8", "--trainer.alpha", "8",
                            "--trainer.gradient-checkpointing", "false", "--loop.eval-episodes", "0",
                            "--concurrency", "3"])
    assert cfg.loop.preset == "marshal" and cfg.reply.think and cfg.reply.match == "exact"
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    assert store.completed_iterations() == 2
    tok = AutoTokenizer.from_pretrained(model_path)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    eps = list(store.episodes())
    assert sorted(e.game for e in eps) == sorted(["tictactoe", "kuhn_poker", "mini_hanabi"] * 2)
    turns = [t for e in eps for t in e.turns if t.completion_token_ids]
    assert turns
    for e in eps:
        for t in e.turns:
            assert tok.decode(t.prompt_token_ids).endswith("<think>\n")  # every turn starts inside a think block
            assert t.completion_token_ids[-1] == eot  # the end-of-turn token is sampled, so it is trained
            assert t.illegal_reason is None, (t.response, t.illegal_reason)
            assert parse_answer(t.response, [t.action], cfg.reply) == (t.action, None)  # MARSHAL's exact judge
        for seat in {t.seat for t in e.turns}:  # a seat's conversation grows: each prompt extends the last one
            mine = [t for t in e.turns if t.seat == seat]
            for a, b in zip(mine, mine[1:]):
                assert list(b.prompt_token_ids[: len(a.prompt_token_ids)]) == list(a.prompt_token_ids)
        # (the reply itself comes back re-tokenized: the constrained sampler splits an action like '<X(1,1)>' in
        # tokens the tokenizer would not choose, so such turns train as sequences of their own, not packed)
    for m in store.metrics():
        assert m["dropped_acts"] == 0 and m["trained_acts"] == sum(len(e.turns) for e in eps if e.iteration ==
                                                                    m["iteration"])
        assert m["trained_tokens"] > 0


def _kuhn_deal(seed: int) -> tuple[int, int]:
    from stratagem.games.registry import make_game

    game = make_game("kuhn_poker")
    game.reset(seed)
    return tuple(game.state.history()[:2])


def test_kuhn_with_exact_evaluation_before_and_after(vllm_server, model_path, tmp_path):
    """loop.eval_exact: the starting and the final policy's tables on the real server, written beside the run; the
    trained adapter's table is not the base model's."""
    import json

    # the update needs returns that differ: the length penalty as above separates replies of different lengths, and
    # six deals (seeds 10000-10005) give the higher card to seat 0 in five and to seat 1 in one, so even a model that
    # always passes (the default model nearly does) wins some showdowns and loses others; the first four deals alone
    # all favour seat 0, which left every advantage 0 and the adapter equal to the base model
    cfg = _cfg(LENGTH_PENALTY, algo="mars", games=["kuhn_poker"], model=model_path, iterations=1, eval_exact=True,
               episodes_per_iteration=6)
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    deals = {e.seed: _kuhn_deal(e.seed) for e in store.episodes()}
    assert {c0 > c1 for c0, c1 in deals.values()} == {True, False}, deals  # the premise above
    assert store.metrics()[0]["adv_std"] > 0
    before = json.loads((store.root / "eval" / "exact-before.json").read_text())
    after = json.loads((store.root / "eval" / "exact-after.json").read_text())
    assert (before["model"], after["model"]) == ("base", "iter-1")
    b, a = before["per_game"]["kuhn_poker"], after["per_game"]["kuhn_poker"]
    assert b["information_states"] == a["information_states"] == 12 and b["requests"] > 0
    assert 0 < b["exploitability"] <= 2 and 0 < a["exploitability"] <= 2
    tables = {p.name.split("-")[1]: json.loads(p.read_text())["table"]
              for p in (store.root / "eval" / "exact").glob("policy-*.json")}
    assert set(tables) == {"base", "iter"}  # policy-base-..., policy-iter-1-...
    diff = max(abs(tables["base"][k][a] - tables["iter"][k][a]) for k in tables["base"] for a in tables["base"][k])
    assert diff > 1e-4


def test_league_kuhn_three_iterations_with_exact_tracking_and_ratings(vllm_server, model_path, tmp_path):
    """loop.league on the real server: iteration 3's learner (iter-2) meets base, iter-1 and the random bot, as drawn
    from each game's seed; the server samples each opponent's own adapter (loaded from this run's store, whatever
    the shared server held under that name before); the learner's exact numbers are committed every iteration;
    `rate_run` rates the run's policies among the bots."""
    from stratagem.training.league import draw_opponents, rate_run

    cfg = _cfg(LENGTH_PENALTY, algo="mars", games=["kuhn_poker"], model=model_path, iterations=3,
               episodes_per_iteration=6, policy_seat="alternate", eval_exact_every=1,
               league={"pool": 2, "latest": 1, "bots": ["random"]})
    # the tracked numbers come from the trainer's weights in its dtype, the rating's from the adapter in fp32: on a
    # CPU that trains in bf16 (AVX-512 BF16, AMX) they would differ by bf16's rounding, not by a bug
    cfg.trainer.dtype = "float32"
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    eps = [e for e in store.episodes() if e.iteration == 3]
    drawn = [draw_opponents(cfg.loop.league, 3, e.seed, 1, "iter-2")[0] for e in eps]
    assert set(drawn) == {"llm:iter-1", "llm:base", "random"}  # the premise: seeds 30000-30005 draw all three
    for e, opponent in zip(eps, drawn):
        seat = e.metrics["policy_seat"]
        assert e.seats[seat].agent == "llm:iter-2" and e.seats[1 - seat].agent == opponent
        sampled_by = {t.adapter for t in e.turns if t.seat == 1 - seat}
        assert sampled_by == ({opponent.removeprefix("llm:")} if opponent.startswith("llm:") else {None})
        assert {t.adapter for t in e.turns if t.seat == seat} == {"iter-2"}
    metrics = store.metrics()
    assert [m["iteration"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert 0 < m["exact/kuhn_poker/exploitability"] <= 2 and "exact/kuhn_poker/vs_cfr" in m
    assert metrics[2]["league/games_vs/llm:iter-1"] == 2.0
    for k in (1, 2, 3):
        assert (store.root / "eval" / f"exact-iter-{k}.json").is_file()

    rated = rate_run(store.root, ["kuhn_poker"], ["random", "cfr"])
    g = rated["games"]["kuhn_poker"]
    assert set(g["elo"]) == {"random", "cfr", "base", "iter-1", "iter-2", "iter-3"} and g["elo"]["random"] == 0.0
    assert g["score"]["cfr"]["random"] > 0.5  # exact: CFR beats random (its Elo also depends on the trained policies)
    # the table rated as iter-3 is the run's last adapter, scored afresh: the same exploitability as tracked
    assert g["exploitability"]["iter-3"] == pytest.approx(metrics[2]["exact/kuhn_poker/exploitability"], abs=1e-3)


def test_per_role_adapters_on_the_real_server(vllm_server, model_path, tmp_path):
    """trainer.adapters per_role on Kuhn: after iteration 1 each seat is sampled by its own role's adapter, both
    served side by side and each verified against the trainer; the exact evaluation scores each seat's points
    with its role's adapter, so the final table differs from the base model's."""
    import json

    from stratagem.games.registry import role_model

    cfg = _cfg(LENGTH_PENALTY, algo="mars", games=["kuhn_poker"], model=model_path, iterations=2, eval_exact=True,
               episodes_per_iteration=6)
    cfg.trainer.adapters = "per_role"
    cfg.trainer.dtype = "float32"  # the exact tables are compared with the rating's fp32 ones (see the league test)
    cfg.validate()
    store = run_training(cfg, tmp_path / "run", server=vllm_server, progress=False)
    eps = [e for e in store.episodes() if e.iteration == 2]
    for e in eps:
        for t in e.turns:
            assert t.adapter == role_model("iter-1", f"player_{t.seat}")
    assert {t.adapter for e in store.episodes() if e.iteration == 1 for t in e.turns} == {"base"}
    for m in store.metrics():
        for r in ("player_0", "player_1"):
            assert m[f"verify/{r}/mean_abs_diff"] < 1e-3, m  # each adapter is the one served under its name (fp32)
    for k in (1, 2):
        assert all((store.adapter_dir(k) / r / "adapter_config.json").is_file() for r in ("player_0", "player_1"))
    after = json.loads((store.root / "eval" / "exact-after.json").read_text())["per_game"]["kuhn_poker"]
    before = json.loads((store.root / "eval" / "exact-before.json").read_text())["per_game"]["kuhn_poker"]
    assert 0 < after["exploitability"] <= 2 and after["exploitability"] != before["exploitability"]

    # the run's per-role policies rated among the bots (each seat by its role's adapter)
    from stratagem.training.league import rate_run

    rated = rate_run(store.root, ["kuhn_poker"], ["random", "cfr"])["games"]["kuhn_poker"]
    assert set(rated["elo"]) == {"random", "cfr", "base", "iter-1", "iter-2"} and rated["elo"]["random"] == 0.0
    assert rated["exploitability"]["iter-2"] == pytest.approx(after["exploitability"], abs=1e-3)
