"""One report: collect the runs, write report.md, report.csv and the plots into the output dir."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from ..errors import LsrAdaptError
from ..iofiles import write_text
from .collect import by_task, collect, display, group_configs
from .plots import plot_curves, plot_frontier, plot_memory
from .statistics import CONFIDENCE, SMALL_BUDGET, matched_budgets, small_budgets
from .tables import SMALL_TABLE_PARTNER, csv_rows, md_matched_table, md_table, relative, render_csv


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"



REPORT_SUFFIX = "-report"  # the default output beside a finished run dir: RUN_DIR-report/


def output_dir(dirs: list[Path], out: Path | None = None) -> Path:
    """Where the report goes: ``out`` if given, else the first dir, except that a finished run dir
    (one holding results.json) is never written into: its report goes beside it, ``RUN_DIR-report/``.
    A sweep dir (its runs one level or more below) takes its report itself, as the sweep's end does.
    An ``out`` inside a finished run dir, or one that cannot be a directory, is refused."""
    from ..outpaths import check_output_dir, finished_run_of

    if out is None:
        first = Path(dirs[0])
        run = finished_run_of(first) if first.is_dir() else None
        out = first if run is None else run.parent / f"{run.name}{REPORT_SUFFIX}"
        flag = "the default output dir"
    else:
        flag = "--out"
    return check_output_dir(Path(out), flag)


def build_report(dirs: list[Path], out: Path | None = None, plots: bool = True) -> dict:
    """Collect, aggregate, write ``report.md``, ``report.csv`` and the plots; returns what it wrote."""
    dirs = [Path(d) for d in dirs]
    runs, problems = collect(dirs)  # reads only: a bad input dir is named before the output is
    out = output_dir(dirs, out)
    configs = group_configs(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LsrAdaptError(f"--out {out}: cannot create it ({e.strerror or e}); choose another directory") from None
    written = {"md": out / "report.md", "csv": out / "report.csv", "plots": []}

    md = ["# Method comparison", "",
          f"{len(runs)} completed run(s) in {len(configs)} configuration(s) from "
          + ", ".join(f"`{d}`" for d in dirs)
          + (f"; {len(problems)} job(s) failed or unfinished (listed at the end)." if problems else "."),
          "", "Best = best validation metric over the epochs of a run; mean ± sample standard deviation over "
          "the seeds (n runs). Times and memory are means over the seeds.", ""]
    tasks = by_task(configs)
    for (task, metric), group in tasks.items():
        one_metric = len({m for t, m in tasks if t == task}) == 1
        md += _task_section(group, task, metric, out if plots else None,
                            _slug(task if one_metric else f"{task}_{metric}"), written["plots"])
    if not configs:
        md += ["No completed run yet.", ""]
    if problems:
        md += ["## Failed or unfinished jobs", "", "| job directory | status | reason |", "|---|---|---|"]
        md += [f"| `{relative(p.path, out)}` | {p.status} | {p.reason.replace('|', '/')} |" for p in problems]
        md.append("")
    write_text(written["csv"], render_csv(csv_rows(configs, out)))
    write_text(written["md"], "\n".join(md))
    written.update(runs=len(runs), configs=len(configs), problems=problems)
    return written


def _task_section(group: list, task: str, metric: str, plot_dir: Path | None, slug: str, plotted: list) -> list[str]:
    """report.md's section of one task: the configurations, the LSR − LoRA comparisons, the plots
    (drawn into ``plot_dir`` and added to ``plotted``; none when it is None)."""
    devices = sorted({str(c.first.get("device")) for c in group})
    md = [f"## {task} — validation {metric}", "", md_table(group), "",
          f"Device: {', '.join(devices)}; seeds: "
          + "; ".join(f"{display(c, group)}: {', '.join(map(str, c.seeds))}" for c in group), ""]
    for title, rows, rule, partner in (
            ("Matched budgets", matched_budgets(group, metric),
             "the LSR configuration closest to it in adapter parameters (by ratio)", "closest LSR"),
            (f"LSR at ≤ {SMALL_BUDGET:.0%} of LoRA's budget", small_budgets(group, metric),
             f"the largest LSR configuration with at most {SMALL_BUDGET:.0%} of its adapter parameters",
             SMALL_TABLE_PARTNER)):
        if not rows:
            continue
        split = rows[0]["split"]
        md += [f"### {title}: LSR vs LoRA, {split} {metric}", "",
               f"Each LoRA configuration against {rule}. Split: **{split}** ("
               + ("the labelled test split, with each run's best-epoch weights" if split == "test" else
                  "the best validation metric of each run: not every run has test labels")
               + f"). LSR − LoRA is the difference of the means over the seeds with its {CONFIDENCE:.0%} Welch t "
               "interval; better / worse when the whole interval favours / disfavours LSR, else tie.", "",
               md_matched_table(rows, metric, partner), ""]
    if plot_dir is not None:
        for name, draw, args in (("curves", plot_curves, (group, task, metric)),
                                 ("frontier", plot_frontier, (group, task, metric)),
                                 ("frontier_trainable", partial(plot_frontier, x="trainable"), (group, task, metric)),
                                 ("memory", plot_memory, (group, task))):
            png = plot_dir / f"{name}_{slug}.png"
            if draw(*args, png):
                plotted.append(png)
                md += [f"![{name} {task}]({png.name})", ""]
    return md
