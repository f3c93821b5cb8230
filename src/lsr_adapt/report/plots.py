"""The report's PNG plots: validation curves (one panel per method), the frontier over adapter (or
trainable) parameters with each method's Pareto line, and peak memory."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..iofiles import atomic_path
from ..metrics import higher_is_better
from .collect import Config, display
from .statistics import pareto, quality_split, quality_values


def _method_colors(configs: list[Config]) -> dict[str, str]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    methods = sorted({str(c.first.get("adaptation_type")) for c in configs})
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def curve(c: Config, metric: str) -> dict[int, tuple[float, float, float, float]]:
    """epoch → (mean metric, min, max, mean elapsed s) over the seeds that reached that epoch."""
    per_epoch: dict[int, list[tuple[float, float]]] = {}
    for r in c.runs:
        for h in r.get("eval_history") or []:
            if isinstance(h.get(metric), (int, float)) and h.get("epoch") is not None:
                per_epoch.setdefault(int(h["epoch"]), []).append((float(h[metric]), float(h.get("elapsed_s") or 0)))
    return {e: (statistics.fmean(m for m, _ in v), min(m for m, _ in v), max(m for m, _ in v),
                statistics.fmean(t for _, t in v)) for e, v in sorted(per_epoch.items())}


def plot_curves(configs: list[Config], task: str, metric: str, path: Path) -> bool:
    """Validation metric vs epoch (left) and vs wall-clock training time (right), one row of panels
    per method, so that a frontier's many configurations stay readable: inside a row each
    configuration has its own colour, ordered by adapter parameters (light = small), and a legend."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    by_method: dict[str, list[tuple[Config, dict]]] = {}
    for c in sorted(configs, key=lambda c: (c.first.get("adapter_params") or 0, c.label)):
        pts = curve(c, metric)
        if pts:
            by_method.setdefault(str(c.first.get("adaptation_type")), []).append((c, pts))
    if not by_method:
        return False
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(13, 3.6 * len(by_method)))
    axes = fig.subplots(len(by_method), 2, squeeze=False, sharey=True)  # one scale: rows compare
    for (method, rows), (ax_e, ax_t) in zip(sorted(by_method.items()), axes):
        for i, (c, pts) in enumerate(rows):
            epochs = list(pts)
            mean = [pts[e][0] for e in epochs]
            lo, hi = [pts[e][1] for e in epochs], [pts[e][2] for e in epochs]
            times = [pts[e][3] for e in epochs]
            color = cmap(0.85 - 0.8 * i / max(1, len(rows) - 1))
            style = dict(color=color, marker="o", markersize=3.5, linewidth=1.5)
            ax_e.plot(epochs, mean, label=f"{display(c, configs)} (n={len(c.runs)})", **style)
            ax_t.plot(times, mean, **style)
            if len(c.runs) > 1:
                ax_e.fill_between(epochs, lo, hi, color=color, alpha=0.12, linewidth=0)
                ax_t.fill_between(times, lo, hi, color=color, alpha=0.12, linewidth=0)
        for ax in (ax_e, ax_t):
            ax.set_ylabel(f"validation {metric}")
            ax.grid(True, alpha=0.3)
        ax_e.set_title(f"{method}: vs epoch", fontsize=10)
        ax_t.set_title(f"{method}: vs wall-clock training time", fontsize=10)
        ax_e.xaxis.get_major_locator().set_params(integer=True)
        ax_t.legend(*ax_e.get_legend_handles_labels(), fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][1].set_xlabel("wall-clock training time (s)")
    fig.suptitle(f"{task}: validation {metric} during training (mean over seeds; band = min–max)")
    fig.tight_layout()
    _save(fig, path)
    return True


X_AXES = {  # frontier plots: x = adapter parameters (the default), or everything that trains
    "adapter": ("adapter_params", "adapter parameters (log scale; the head, the same for every method, not counted)"),
    "trainable": ("trainable_params", "trainable parameters (adapter + head, log scale)"),
}


def plot_frontier(configs: list[Config], task: str, metric: str, path: Path, x: str = "adapter") -> bool:
    """Quality vs parameters: one point per configuration (mean ± std over the seeds, on the report's
    split), each method's Pareto line; configurations without adapter parameters (head-only, full
    fine-tuning) are horizontal reference lines on the adapter axis."""
    from matplotlib.figure import Figure

    key, xlabel = X_AXES[x]
    split = quality_split(configs)
    higher = higher_is_better(metric)
    colors = _method_colors(configs)
    fig = Figure(figsize=(9, 5.6))
    ax = fig.subplots()
    by_method: dict[str, list[tuple[float, float]]] = {}
    labels, references = [], []
    for c in sorted(configs, key=lambda c: c.first.get(key) or 0):
        v = quality_values(c, split)
        size = c.first.get(key)
        if not v or not isinstance(size, (int, float)):
            continue
        method = str(c.first.get("adaptation_type"))
        y, std = statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)
        if size <= 0:
            references.append((c, y, std))
            continue
        ax.errorbar([size], [y], yerr=[std] if std is not None else None, fmt="o", color=colors[method],
                    capsize=4, markersize=6, label=method if method not in by_method else None, zorder=3)
        by_method.setdefault(method, []).append((float(size), y))
        labels.append((float(size), y, f"{method} {c.label} (n={len(v)})".replace("  ", " "), colors[method]))
    if not by_method and not references:
        return False
    for method, pts in by_method.items():  # each method's efficiency frontier
        front = pareto(pts, higher)
        if len(front) > 1:
            ax.plot([p[0] for p in front], [p[1] for p in front], "--", color=colors[method], linewidth=1.2,
                    alpha=0.8, zorder=2, label=f"{method} Pareto front")
    xs = [p[0] for pts in by_method.values() for p in pts] or [1.0]
    ax.set_xscale("log")
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 1.6, hi * 1.6) if lo != hi else ax.set_xlim(lo / 2, hi * 2)
    for c, y, std in references:  # head-only / full fine-tuning: no adapter, a level to compare with
        method = str(c.first.get("adaptation_type"))
        ax.axhline(y, color=colors[method], linestyle=":", linewidth=1.4, zorder=1,
                   label=f"{display(c, configs)} (n={len(quality_values(c, split))}, no adapter)")
        if std is not None:
            ax.axhspan(y - std, y + std, color=colors[method], alpha=0.08, linewidth=0, zorder=0)
    _plain_log_ticks(ax, xs)
    ax.set_xlabel(xlabel)
    what = f"test {metric}" if split == "test" else f"best validation {metric}"
    ax.set_ylabel(f"{what} (mean ± std over seeds)" + ("" if higher else ", lower is better"))
    ax.set_title(f"{task}: {what} vs {x} parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    place_labels(ax, labels)
    _save(fig, path)
    return True


def place_labels(ax, items: list[tuple[float, float, str, object]]) -> list:
    """Annotate points without overlaps: each label takes the first candidate offset whose box meets
    neither an earlier label nor a marker (greedy, in display space); returns the text artists."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = ax.figure
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    offsets = [(7, 5), (7, -13), (-7, 5), (-7, -13), (7, 17), (7, -25), (-7, 17), (-7, -25),
               (7, 29), (7, -37), (-7, 29), (-7, -37), (7, 41), (7, -49)]
    markers = [ax.transData.transform((px, py)) for px, py, _, _ in items]
    placed, texts = [], []
    for (px, py, text, color) in items:
        best = None
        for dx, dy in offsets:
            t = ax.annotate(text, (px, py), textcoords="offset points", xytext=(dx, dy), fontsize=7.5,
                            color=color, ha="left" if dx > 0 else "right",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
            box = t.get_window_extent(renderer).expanded(1.02, 1.08)
            clash = any(box.overlaps(b) for b in placed) or any(box.contains(mx, my) for mx, my in markers)
            if not clash:
                best = (t, box)
                break
            t.remove()
        if best is None:  # every candidate clashes: the first one, drawn anyway
            dx, dy = offsets[0]
            t = ax.annotate(text, (px, py), textcoords="offset points", xytext=(dx, dy), fontsize=7.5, color=color,
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
            best = (t, t.get_window_extent(renderer))
        texts.append(best[0])
        placed.append(best[1])
    return texts


def _plain_log_ticks(ax, xs: list[float]) -> None:
    """Parameter counts as 3,170 rather than 3.2×10³; minor ticks labelled too within a decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
    # within a decade label the 2, 3 and 5 minor ticks only: all eight collide near the next power of 10
    some = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5)
                         else "")
    ax.xaxis.set_major_formatter(plain)
    narrow = max(xs) / min(xs) < 10
    ax.xaxis.set_minor_formatter(some if narrow else NullFormatter())
    ax.tick_params(axis="x", which="both", labelsize=8)


def plot_memory(configs: list[Config], task: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    colors = _method_colors(configs)
    rows = [(c, c.mean("peak_memory_mb")) for c in configs]
    rows = [(c, m) for c, m in rows if m is not None]
    if not rows:
        return False
    kinds = {str(c.first.get("peak_memory_kind")) for c, _ in rows}
    kind = {"cpu_max_rss": "process max RSS", "cuda_max_allocated": "CUDA max allocated"}.get(
        next(iter(kinds)), next(iter(kinds))) if len(kinds) == 1 else "mixed kinds, see report.csv"
    fig = Figure(figsize=(8, 1.2 + 0.45 * len(rows)))
    ax = fig.subplots()
    labels = [display(c, configs) for c, _ in rows]
    values = [m for _, m in rows]
    bars = ax.barh(range(len(rows)), values, color=[colors[str(c.first.get("adaptation_type"))] for c, _ in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    ax.set_xlabel(f"peak memory (MB, {kind}; mean over seeds)")
    ax.set_title(f"{task}: peak memory per configuration")
    ax.set_xlim(0, max(values) * 1.15)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True
