"""PNG pictures of results: confusion matrices and training curves (dvc plots needs a CDN offline)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def confusion_png(matrix: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, rows = true class."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=120)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({matrix[i, j]})", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curves_png(history: pd.DataFrame, path: str | Path, title: str) -> None:
    """Per-epoch train/validation loss and validation UA, one line per fold."""
    fig, (loss_ax, ua_ax) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=120)
    for fold, h in history.groupby("fold"):
        line, = loss_ax.plot(h["epoch"], h["train_loss"], label=f"{fold} train")
        loss_ax.plot(h["epoch"], h["val_loss"], ls="--", color=line.get_color(), label=f"{fold} val")
        ua_ax.plot(h["epoch"], h["val_ua"], color=line.get_color(), label=fold)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss (solid train, dashed val)")
    ua_ax.set(xlabel="epoch", ylabel="UA", title="validation UA")
    ua_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
