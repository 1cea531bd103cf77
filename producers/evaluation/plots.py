"""PNG plots of an evaluation (matplotlib, Agg backend): confusion matrix, per-category bars, radar chart.

matplotlib is the optional extra ``guardq[eval]``; without it :func:`write_plots` raises a clear error the CLI
turns into a hint (``--no-plots`` skips the PNGs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from producers.evaluation.metrics import CATEGORY_CODES
from schemas.errors import ConfigError

O_CODES = CATEGORY_CODES[:-1]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'guardq[eval]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_category(metrics: dict[str, Any], key: str) -> list[float]:
    cats = metrics["metrics"]["per_category"]
    return [(cats[c] or {}).get(key, 0.0) * 100 for c in O_CODES]


def confusion_matrix(metrics: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    o = metrics["metrics"]["overall"]
    cells = [[o["tp"], o["fn"]], [o["fp"], o["tn"]]]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cells, cmap="Blues")
    for i in range(2):
        for j in range(2):
            label = [["TP", "FN"], ["FP", "TN"]][i][j]
            ax.text(j, i, f"{label}\n{cells[i][j]}", ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], labels=["pred. Unsafe", "pred. Safe"])
    ax.set_yticks([0, 1], labels=["true Unsafe", "true Safe"])
    ax.set_title(f"Confusion matrix (invalid: {o['invalid']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def category_bars(metrics: dict[str, Any], path: Path, compare: dict[str, Any] | None = None) -> Path:
    plt = _pyplot()
    series = [
        ("balanced accuracy", _per_category(metrics, "balanced_accuracy")),
        ("recall", _per_category(metrics, "recall")),
    ]
    if compare:
        series.append(("balanced accuracy (compared run)", _per_category(compare, "balanced_accuracy")))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for k, (label, values) in enumerate(series):
        ax.bar([i + k * width for i in range(len(O_CODES))], values, width=width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(O_CODES))], labels=list(O_CODES))
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title("Per category (ground-truth category)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def radar(metrics: dict[str, Any], path: Path, compare: dict[str, Any] | None = None) -> Path:
    """Per-category balanced accuracy and recall on polar axes, like the LlavaGuard paper's figure."""
    plt = _pyplot()
    angles = [2 * math.pi * i / len(O_CODES) for i in range(len(O_CODES))]
    fig = plt.figure(figsize=(5.2, 5.2))
    ax = fig.add_subplot(projection="polar")
    series = [
        ("balanced accuracy", _per_category(metrics, "balanced_accuracy")),
        ("recall", _per_category(metrics, "recall")),
    ]
    if compare:
        series.append(("compared: balanced accuracy", _per_category(compare, "balanced_accuracy")))
    for label, values in series:
        ax.plot([*angles, angles[0]], [*values, values[0]], label=label)
        ax.fill([*angles, angles[0]], [*values, values[0]], alpha=0.12)
    ax.set_xticks(angles, labels=list(O_CODES))
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(metrics: dict[str, Any], out_dir: Path, compare: dict[str, Any] | None = None) -> list[Path]:
    return [
        confusion_matrix(metrics, out_dir / "confusion_matrix.png"),
        category_bars(metrics, out_dir / "per_category.png", compare),
        radar(metrics, out_dir / "radar.png", compare),
    ]
