"""The bench's PNG: latency distributions (CDFs) of each item's target against its baseline."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _cdf(ax, values: list[float], label: str, style: str) -> None:
    if not values:
        return
    ordered = sorted(v * 1000 for v in values)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], style, label=f"{label} (n={n})", linewidth=1.4)


def draw(samples: dict[str, list[float]], path: Path, title: str) -> None:
    """One panel per item; solid lines are the measured route, dashed its baseline."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    colors = {"c=1": "tab:blue", "c=16": "tab:orange", "c=64": "tab:red"}
    for ax, item, heading in ((axes[0], "item1", "1. POST /usage/generate vs GET /auth/verify"),
                              (axes[1], "item2", "2. GET /jobs/<id> vs GET /auth/verify")):
        for name, values in samples.items():
            if not name.startswith(item + " "):
                continue
            clients = name.split()[1]
            baseline = name.endswith("baseline")
            color = colors.get(clients, "gray")
            _cdf(ax, values, name.removeprefix(item + " "), "--" if baseline else "-")
            ax.lines[-1].set_color(color) if ax.lines else None
        ax.set_title(heading)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    _cdf(ax, samples.get("item3 pipeline overhead", []), "submit to succeeded minus upstream", "-")
    _cdf(ax, samples.get("item3 bare celery round trip", []), "bare Celery round trip", "--")
    ax.set_title("3. pipeline overhead vs a bare Celery round trip")
    ax.set_xscale("log")
    ax.set_xlabel("ms, log scale")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
