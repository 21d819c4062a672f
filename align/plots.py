"""Figures written next to reports (matplotlib, headless, atomic)."""
import threading

import numpy as np

from twin_common.atomic import atomic_path


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def preload() -> None:
    """Import matplotlib on a background thread while the frameworks run: the import takes ~0.8 s of a
    report's ~1.1 s at 1x3x512x640 (benchmarks/bench_align.py), and the frameworks' kernels release the GIL.
    An import that fails there fails again, with its error, where the plot is drawn."""
    def quietly():
        try:
            _pyplot()
        except Exception:
            pass
    threading.Thread(target=quietly, name="align-preload-matplotlib", daemon=True).start()


def plot_curves(path, t_log, p_log, steps, title, t64=None, p64=None):
    """Loss curves of both frameworks, and |torch - paddle| per term on a log scale; given the float64 runs
    (float32 reports), also each framework's float32 noise on the total loss, the floor it is measured against."""
    plt = _pyplot()
    x = np.arange(1, steps + 1)

    def series(log, k):
        return np.array([log[f"step{i:03d}.{k}"][0] for i in range(steps)])
    keys = [k.split(".", 1)[1] for k in t_log if k.startswith("step000.loss")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in keys:
        axes[0].plot(x, series(t_log, k), "-o", label=f"torch {k}")
        axes[0].plot(x, series(p_log, k), "--x", label=f"paddle {k}")
        diff = np.abs(series(t_log, k) - series(p_log, k))
        axes[1].semilogy(x, np.maximum(diff, 1e-18), "-o", label=k)
    if t64 is not None:
        for fw, log, log64 in (("torch", t_log, t64), ("paddle", p_log, p64)):
            noise = np.abs(series(log, "loss") - series(log64, "loss"))
            axes[1].semilogy(x, np.maximum(noise, 1e-18), ":", label=f"{fw} float32 noise (loss)")
    axes[0].set(title=f"{title}: losses", xlabel="step")
    axes[1].set(title="|torch - paddle| (log scale)", xlabel="step")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_divergence(path, summary):
    """Per key in execution order, the fraction of its tolerance used (log scale), the tolerance (1) and the
    first divergence marked."""
    plt = _pyplot()
    keys = list(summary["keys"])
    ratios = np.array([float(summary["keys"][k].get("ratio", 0.0)) for k in keys])
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.semilogy(np.arange(len(keys)), np.clip(ratios, 1e-12, None), ".-", lw=0.6, ms=3, label="ratio to tolerance")
    ax.axhline(1.0, color="red", lw=1, ls="--", label="tolerance")
    first = summary.get("first_divergence")
    if first in summary["keys"]:
        i = keys.index(first)
        ax.axvline(i, color="orange", lw=1, label=f"first divergence: {first}")
    ax.set(title=f"{summary.get('check', '')} ({summary['dtype']})", xlabel="key, in execution order",
           ylabel="fraction of tolerance used")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
