"""Bar charts for result files: one horizontal bar per target, its median, the range over rounds or seeds as the
error bar, ours in red. matplotlib is imported inside `draw` (the `bench` extra), the PNG has no timestamp or
software tag, so the same data draws the same bytes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Bar:
    label: str
    values: list[float]  # one per round or seed
    ours: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    bars: list[Bar] = field(default_factory=list)
    log: bool = False


def draw(panels: list[Panel], title: str, path: Path, columns: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in panels if p.bars]
    if not panels:
        return
    rows = -(-len(panels) // columns)
    height = max(len(p.bars) for p in panels) * 0.42 + 1.4
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, height * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for panel, ax in zip(panels, axes.flat, strict=False):
        mid = [statistics.median(b.values) for b in panel.bars]
        low = [m - min(b.values) for m, b in zip(mid, panel.bars, strict=True)]
        high = [max(b.values) - m for m, b in zip(mid, panel.bars, strict=True)]
        colors = ["tab:red" if b.ours else "tab:grey" for b in panel.bars]
        ax.barh([b.label for b in panel.bars], mid, xerr=[low, high], color=colors, capsize=3)
        if panel.log:
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_xscale("log")
            ax.set_xlim(left=min(min(b.values) for b in panel.bars) / 2)
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(panel.xlabel)
        ax.set_title(panel.title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
