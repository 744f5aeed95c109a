"""The table's bar chart (``table.png``): offline linear-probe top-1 of every row."""

from __future__ import annotations

import io
import math

from pretextlab.table.collect import Row, mean_std


def bar_chart_png(rows: list[Row]) -> bytes | None:
    """PNG of linear top-1 (best and last stage, mean ± std) per row; None without linear results."""
    plotted = [row for row in rows if not row.failed and row.values.get("linear:best")]
    if not plotted:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    several = len({(str(r.data), str(r.backbone)) for r in plotted}) > 1
    labels = [f"{r.label}\n{r.backbone}, {r.data}" if several else r.label for r in plotted]
    figure = Figure(figsize=(max(5.0, 1.1 * len(plotted) + 2), 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(plotted)))
    width = 0.38
    for offset, key, name, colour in ((-width / 2, "linear:best", "best stage", "#1f77b4"),
                                      (width / 2, "linear:last", "last stage", "#aec7e8")):
        means, errors = [], []
        for row in plotted:
            values = row.values.get(key) or [math.nan]
            mean, std = mean_std(values)
            means.append(mean)
            errors.append(std or 0.0)
        axes.bar([p + offset for p in positions], means, width, yerr=errors, label=f"linear probe, {name}",
                 color=colour, capsize=3)
        for position, mean in zip(positions, means):
            if math.isfinite(mean):
                axes.annotate(f"{mean:.1f}", (position + offset, mean), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, fontsize=8)
    axes.set_ylabel("test top-1 (%)")
    axes.set_title("Offline linear probe on frozen features (measured)")
    axes.legend(fontsize=8, loc="upper left")
    axes.set_ylim(0, 100)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
