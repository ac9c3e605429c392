"""Plugins through entry points: a package on sys.path with a dist-info naming a game, an advantage estimator and a
loss is picked up by the registries, so the config, the CLI's game list and one training iteration accept them; a
broken entry point is an error naming it."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
from training_fakes import FakeServer, make_fake_rollout, tiny_model

from stratagem import plugins
from stratagem.games import registry
from stratagem.training import advantages, objectives
from stratagem.training.loop import RunConfig, run_training

PLUGIN = '''
from stratagem.games.registry import GameSpec
from stratagem.games.strategic import build_graph, rollout
from stratagem.games.strategic.poker import KuhnPoker
from stratagem.training.advantages import get_advantage, register_advantage
from stratagem.training.objectives import ClippedPolicyLoss, register_loss

CALLS = []


class ThreeCardKuhn(KuhnPoker):
    name = "plug_kuhn"


SPEC = GameSpec(name="plug_kuhn", kind="strategic", factory=ThreeCardKuhn, build_graph=build_graph,
                rollout=rollout, help="Kuhn poker from a plugin.")


@register_advantage("plug_adv")
def plug_adv(episodes, learner, options, state):
    CALLS.append(len(episodes))
    return get_advantage("mars")(episodes, learner, options, state)


@register_loss("plug_loss")
class PlugLoss(ClippedPolicyLoss):
    pass
'''


def _install(root, entry_points: str) -> None:
    (root / "stratplug").mkdir()
    (root / "stratplug" / "__init__.py").write_text(PLUGIN)
    info = root / "stratplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stratplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    importlib.invalidate_caches()  # importlib.metadata caches a folder's listing by its mtime (1 s granularity)


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    plugins.reset_plugins()
    yield tmp_path / "site"
    plugins.reset_plugins()
    for name in ("plug_kuhn", "bad_game"):
        if name in registry._GAMES:
            registry.unregister_game(name)
    advantages.unregister_advantage("plug_adv")
    objectives.unregister_loss("plug_loss")
    sys.modules.pop("stratplug", None)


def test_an_installed_plugin_trains_one_iteration_with_its_game_estimator_and_loss(plugin_path, tmp_path):
    _install(plugin_path, """
        [stratagem.games]
        plug_kuhn = stratplug:SPEC
        [stratagem.advantages]
        plug_adv = stratplug
        [stratagem.losses]
        plug_loss = stratplug:PlugLoss
    """)
    assert "plug_kuhn" in registry.game_names("strategic")
    assert registry.make_game("plug_kuhn").info.name == "plug_kuhn"
    assert "plug_adv" in advantages.advantage_names() and "plug_loss" in objectives.loss_names()
    cfg = RunConfig.from_dict({"loop": {"algo": "plug_adv", "loss": "plug_loss", "games": ["plug_kuhn"],
                                        "iterations": 1, "episodes_per_iteration": 2,
                                        "model": str(tiny_model(tmp_path / "model"))},
                               "trainer": {"lr": 1e-2, "rank": 4, "alpha": 8, "micro_batch_tokens": 256}})
    calls = []
    store = run_training(cfg, tmp_path / "run", server=FakeServer(), rollout=make_fake_rollout(calls),
                         progress=False)
    assert [c[0] for c in calls] == ["plug_kuhn"] and store.completed_iterations() == 1
    assert sys.modules["stratplug"].CALLS == [2]  # the plugin's estimator computed this iteration's advantages
    # loading the group again registers nothing twice (the same spec, estimator and loss objects)
    plugins.reset_plugins()
    assert plugins.load_plugins("games") == ["plug_kuhn"] and plugins.load_plugins("losses") == ["plug_loss"]
    assert registry.game_names("strategic").count("plug_kuhn") == 1


def test_a_broken_entry_point_is_an_error_naming_it(plugin_path):
    _install(plugin_path, """
        [stratagem.games]
        bad_game = stratplug:NOT_THERE
    """)
    with pytest.raises(plugins.PluginError, match=r"entry point bad_game = 'stratplug:NOT_THERE' \(group "
                                                  r"stratagem.games, package stratplug 0.1\) failed to load"):
        plugins.load_plugins("games")
    plugins.reset_plugins()
    (plugin_path / "stratplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[stratagem.games]\nbad_game = stratplug:plug_adv\n")
    with pytest.raises(plugins.PluginError, match="names function, not a GameSpec"):
        plugins.load_plugins("games")
