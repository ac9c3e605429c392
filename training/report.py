"""`stratagem report RUN_DIR`: PNG curves of a run's metrics.jsonl in RUN_DIR/plots/.

One figure per metric family (return, win rate, illegal-move rate: one line per game / role), and one for the
update (loss, KL, advantage mean and std, tokens/s), each against the iteration.
"""

from __future__ import annotations

from pathlib import Path

from stratagem.training.run_store import RunStore

FAMILIES = {"return": "mean return", "win_rate": "win rate", "illegal_rate": "illegal-move rate"}
UPDATE_KEYS = ("loss", "kl", "adv_mean", "adv_std", "tokens_per_s", "z0", "reward_desirable", "reward_undesirable")


def write_report(run_dir: str | Path) -> list[Path]:
    """Write the plots; returns their paths. A run with no completed iteration is an error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = RunStore(run_dir)
    metrics = store.metrics()
    if not metrics:
        raise ValueError(f"{run_dir} has no completed iteration yet (metrics.jsonl is empty or missing)")
    store.plots_dir.mkdir(parents=True, exist_ok=True)
    its = [m["iteration"] for m in metrics]
    paths: list[Path] = []

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(m["iteration"], m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    for family, label in FAMILIES.items():
        keys = sorted({k for m in metrics for k in m if k.startswith(family + "/")})
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in keys:
            ax.plot(*series(k), marker="o", label=k.split("/", 1)[1])
        ax.set(xlabel="iteration", ylabel=label, title=label)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        paths.append(_save(fig, store.plots_dir / f"{family}.png"))
    keys = [k for k in UPDATE_KEYS if any(k in m for m in metrics)]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
        for ax, k in zip(axes[0], keys):
            ax.plot(*series(k), marker="o")
            ax.set(xlabel="iteration", title=k)
            ax.set_xticks(its)
            ax.grid(alpha=0.3)
        paths.append(_save(fig, store.plots_dir / "update.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
