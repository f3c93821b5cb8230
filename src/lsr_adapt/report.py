"""Compare runs: ``python -m lsr_adapt.report SWEEP_OR_RUN_DIR [more dirs] [--out DIR]``.

Reads every ``results.json`` below the given directories (written by ``training.train``) and writes, into
``--out`` (default: the first directory, a sweep dir; for a finished run dir, which is never changed,
``RUN_DIR-report/`` beside it):

* ``report.md`` and ``report.csv``: one row per configuration, that is everything but the seed
  (task, base model, method, method hyperparameters, learning rate, batch size, epochs, precision,
  device), with the adapter / head / total trainable parameters and % of the model, the best
  validation metric as mean ± sample standard deviation (n − 1) over the seeds with n, the metric
  before training, and the means of train time, examples/s and peak memory;
* per task (and metric) PNG plots: ``curves_<task>.png`` (validation metric vs epoch and vs
  wall-clock training time, mean over seeds with a min–max band), ``frontier_<task>.png`` (the
  metric vs **adapter** parameters, log x, one point per configuration with ± std error bars, each
  method's Pareto line, head-only / full fine-tuning as horizontal levels), ``frontier_trainable_<task>.png``
  (the same vs adapter + head) and ``memory_<task>.png`` (peak memory per configuration);
* per task, a matched-budget table (report.md; ``matched_budget_*`` columns of the LoRA rows in
  report.csv): each LoRA configuration against the LSR one closest in adapter parameters, LSR − LoRA
  with a 95% Welch t interval over the seeds and a verdict (better / tie / worse). Frontier and table
  use the test split when every run has test labels, else the best validation metric, and say which.

Jobs that did not finish are listed, not fatal: a Hydra job directory (one holding ``.hydra/``)
without ``results.json``, a ``results.json`` whose ``status`` is not ``completed``, or one that
cannot be read. Every output is written atomically (``iofiles.atomic_path``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .errors import LsrAdaptError
from .iofiles import atomic_path, write_text
from .metrics import higher_is_better
from .sweep_status import FAILED, read_failure

RESULTS = "results.json"
# keys of results.json that make a configuration (everything but the seed and the measurements)
CONFIG_FIELDS = ("task", "task_type", "metric_name", "model_name", "adaptation_type", "method_config", "pooling",
                 "init_from", "freeze_adapter", "learning_rate", "warmup_ratio", "batch_size", "num_train_epochs",
                 "precision", "device")
# method hyperparameters always named in labels when set; others only where they vary
LABEL_ALWAYS = ("r", "num_terms", "alpha", "in_factors", "out_factors")
LABEL_NEVER = ("path",)  # LSR's compute path: the same update computed another way
SHORT = {"num_terms": "t", "alpha": "α", "in_factors": "in", "out_factors": "out"}


@dataclass
class Problem:
    path: Path
    status: str
    reason: str


@dataclass
class Config:
    """The runs (one per seed, normally) of one configuration."""

    key: tuple
    runs: list[dict] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> dict:
        return self.runs[0]

    def values(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.runs if isinstance(r.get(name), (int, float))]

    def mean(self, name: str) -> float | None:
        v = self.values(name)
        return statistics.fmean(v) if v else None

    def std(self, name: str) -> float | None:
        """Sample standard deviation over the seeds; None for a single run."""
        v = self.values(name)
        return statistics.stdev(v) if len(v) > 1 else None

    def test_values(self) -> list[float]:
        """The selection metric on the labelled test split (the best epoch's weights), per run."""
        out = []
        for r in self.runs:
            v = (r.get("test_metrics") or {}).get(r.get("metric_name"))
            if isinstance(v, (int, float)):
                out.append(float(v))
        return out

    def test_mean_std(self) -> tuple[float | None, float | None]:
        v = self.test_values()
        return (statistics.fmean(v) if v else None), (statistics.stdev(v) if len(v) > 1 else None)

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.runs]


# -- collecting --------------------------------------------------------------------------------------
def collect(dirs: list[Path]) -> tuple[list[tuple[Path, dict]], list[Problem]]:
    """(run dir, results) of every completed run below ``dirs``, and the jobs that did not complete."""
    runs, problems, seen = [], [], set()
    found_any = False
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise LsrAdaptError(f"{d} is not a directory: give sweep or run directories (multirun/..., outputs/...)")
        result_files = sorted(d.rglob(RESULTS))
        job_dirs = sorted({p.parent for p in d.rglob(".hydra") if p.is_dir()} | {p.parent for p in d.rglob(FAILED)})
        found_any = found_any or bool(result_files or job_dirs)
        for f in result_files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                data = json.loads(f.read_text())
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                problems.append(Problem(f.parent, "unreadable", f"{RESULTS}: {e}"))
                continue
            status = str(data.get("status", "unknown"))
            if status != "completed":
                reason = data.get("error") or data.get("message") or f"{RESULTS} says status={status}"
                if status == "pruned" and isinstance(data.get("pruned"), dict):  # hpo: the pruner stopped it
                    pr = data["pruned"]
                    reason = (f"Optuna trial {pr.get('trial')} stopped by the pruner after epoch {pr.get('epoch')} "
                              f"(validation {pr.get('metric')} {pr.get('value')})")
                problems.append(Problem(f.parent, status, str(reason)))
                continue
            runs.append((f.parent, data))
        for j in job_dirs:
            if (j / RESULTS).exists() or j.resolve() in seen:
                continue
            seen.add(j.resolve())
            failure = read_failure(j)  # a failed job of a sweep: its error line (sweep_status.run_job)
            problems.append(Problem(j, "failed", failure.error) if failure else
                            Problem(j, "unfinished", _why_unfinished(j)))
    if not found_any:
        where = ", ".join(str(d) for d in dirs)
        raise LsrAdaptError(f"no {RESULTS} and no Hydra job directory below {where}: nothing to report "
                            f"(run e.g. `python main.py -m experiment=smoke model=roberta_lora,roberta_lsr` first)")
    return runs, problems


def _why_unfinished(job: Path) -> str:
    """The job's last logged error (``main.log``), else 'no results.json'."""
    logs = sorted(job.glob("*.log"))
    for log_file in logs:
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        errors = [ln for ln in lines if "[ERROR]" in ln or ln.startswith("error:")]
        if errors:
            return "failed: " + re.sub(r"^\[[^]]*\]\[[^]]*\]\[ERROR\] - ", "", errors[-1]).strip()[:300]
    return f"no {RESULTS} (still running, killed, or crashed before writing it)"


def group_configs(runs: list[tuple[Path, dict]]) -> list[Config]:
    groups: dict[tuple, Config] = {}
    for run_dir, data in runs:
        key = tuple(json.dumps(data.get(k), sort_keys=True) for k in CONFIG_FIELDS)
        cfg = groups.setdefault(key, Config(key))
        cfg.runs.append(data)
        cfg.dirs.append(run_dir)
    configs = list(groups.values())
    _set_labels(configs)
    configs.sort(key=lambda c: (str(c.first.get("task")), str(c.first.get("metric_name")),
                                str(c.first.get("adaptation_type")), c.first.get("adapter_params") or 0,
                                c.first.get("learning_rate") or 0, c.label))
    return configs


def _fmt_value(v) -> str:
    if isinstance(v, dict) and "path" in v:  # init_from: the run it started from
        return Path(str(v["path"])).name
    if isinstance(v, list):
        return "×".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _set_labels(configs: list[Config]) -> None:
    """'r=2 t=16 α=2' style labels: the size fields, plus whatever differs between configs of a method."""
    by_method: dict[str, list[Config]] = {}
    for c in configs:
        by_method.setdefault(str(c.first.get("adaptation_type")), []).append(c)
    for group in by_method.values():
        mcs = [c.first.get("method_config") or {} for c in group]
        keys = list(dict.fromkeys(k for mc in mcs for k in mc))
        varying = {k for k in keys if len({json.dumps(mc.get(k), sort_keys=True) for mc in mcs}) > 1}
        for c, mc in zip(group, mcs):
            parts = []
            for k in keys:
                v = mc.get(k)
                if k in LABEL_NEVER or v is None or (k not in varying and k not in LABEL_ALWAYS):
                    continue
                parts.append(k if v is True else f"{SHORT.get(k, k)}={_fmt_value(v)}")
            c.label = " ".join(parts)


def _display(c: Config, configs: list[Config]) -> str:
    """Method + label, and the training setting where it differs from the other configs shown."""
    text = f"{c.first.get('adaptation_type')} {c.label}".strip()
    for k, short in (("learning_rate", "lr"), ("warmup_ratio", "warmup"), ("num_train_epochs", "ep"),
                     ("batch_size", "bs"), ("model_name", "model"), ("pooling", "pool"), ("init_from", "from"), ("freeze_adapter", "frozen"),
                     ("device", "on")):
        if len({json.dumps(x.first.get(k)) for x in configs}) > 1:
            text += f" {short}={_fmt_value(c.first.get(k))}"
    return text


def by_task(configs: list[Config]) -> dict[tuple[str, str], list[Config]]:
    tasks: dict[tuple[str, str], list[Config]] = {}
    for c in configs:
        tasks.setdefault((str(c.first.get("task")), str(c.first.get("metric_name"))), []).append(c)
    return tasks


# -- tables ------------------------------------------------------------------------------------------
CSV_COLUMNS = (
    "task", "metric", "method", "hyperparameters", "method_config", "base_model", "learning_rate", "batch_size",
    "epochs", "adapter_params", "head_params", "trainable_params", "total_params", "percent_trainable",
    "best_mean", "best_std", "n", "test_mean", "test_std", "seeds", "best_epoch_mean", "metric_before_mean", "train_time_s_mean",
    "examples_per_s_mean", "peak_memory_mb_mean", "peak_memory_kind", "precision", "device", "run_dirs",
    # LoRA rows: the LSR configuration closest in adapter parameters and LSR − LoRA (report.md's matched-budget table)
    "matched_budget_partner", "matched_budget_partner_adapter_params", "matched_budget_split",
    "matched_budget_diff", "matched_budget_ci_low", "matched_budget_ci_high", "matched_budget_verdict",
)


def csv_rows(configs: list[Config], root: Path) -> list[dict]:
    matched = {id(m["reference"]): m for (_, metric), group in by_task(configs).items()
               for m in matched_budgets(group, metric)}
    rows = []
    for c in configs:
        f = c.first
        m = matched.get(id(c))
        match = {} if m is None else {
            "matched_budget_partner": f"{m['partner'].first.get('adaptation_type')} {m['partner'].label}".strip(),
            "matched_budget_partner_adapter_params": m["partner"].first.get("adapter_params"),
            "matched_budget_split": m["split"], "matched_budget_diff": m["diff"],
            "matched_budget_ci_low": m["interval"][0] if m["interval"] else None,
            "matched_budget_ci_high": m["interval"][1] if m["interval"] else None,
            "matched_budget_verdict": m["verdict"]}
        rows.append({
            "task": f.get("task"), "metric": f.get("metric_name"), "method": f.get("adaptation_type"),
            "hyperparameters": c.label, "method_config": json.dumps(f.get("method_config"), sort_keys=True),
            "base_model": f.get("model_name"), "learning_rate": f.get("learning_rate"),
            "batch_size": f.get("batch_size"), "epochs": f.get("num_train_epochs"),
            "adapter_params": f.get("adapter_params"), "head_params": f.get("head_params"),
            "trainable_params": f.get("trainable_params"), "total_params": f.get("total_params"),
            "percent_trainable": f.get("percent_trainable"),
            "best_mean": c.mean("best_metric"), "best_std": c.std("best_metric"), "n": len(c.runs),
            "test_mean": c.test_mean_std()[0], "test_std": c.test_mean_std()[1],
            "seeds": " ".join(str(s) for s in c.seeds), "best_epoch_mean": c.mean("best_epoch"),
            "metric_before_mean": c.mean("metric_before_training"), "train_time_s_mean": c.mean("train_runtime_s"),
            "examples_per_s_mean": c.mean("examples_per_s"), "peak_memory_mb_mean": c.mean("peak_memory_mb"),
            "peak_memory_kind": f.get("peak_memory_kind"), "precision": f.get("precision"),
            "device": f.get("device"), "run_dirs": " ".join(_rel(d, root) for d in c.dirs), **match,
        })
    return rows


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def _num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _int(v) -> str:
    return "–" if v is None else f"{int(v):,}"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def md_table(configs: list[Config]) -> str:
    head = ["method", "hyperparameters", "base model", "lr", "adapter params", "head params",
            "trainable (% of model)", "best (mean ± std)", "n", "test (mean ± std)", "before training",
            "train time (s)", "examples/s", "peak memory (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        f = c.first
        std = c.std("best_metric")
        best = _num(c.mean("best_metric")) + (f" ± {std:.4f}" if std is not None else "")
        t_mean, t_std = c.test_mean_std()
        test = _num(t_mean) + (f" ± {t_std:.4f}" if t_std is not None else "")
        pct = f.get("percent_trainable")
        trainable = _int(f.get("trainable_params")) + (f" ({pct:.3f}%)" if isinstance(pct, (int, float)) else "")
        cells = [str(f.get("adaptation_type")), c.label or "–", str(f.get("model_name")),
                 _fmt_value(f.get("learning_rate")), _int(f.get("adapter_params")), _int(f.get("head_params")),
                 trainable, best, str(len(c.runs)), test, _num(c.mean("metric_before_training")),
                 _num(c.mean("train_runtime_s"), 1), _num(c.mean("examples_per_s"), 1),
                 _num(c.mean("peak_memory_mb"), 0)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    note = majority_note(configs)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


MAJORITY_EPS = 1e-9  # float rounding of two k/n accuracies, far below one example in any split


def majority_note(configs: list[Config]) -> str:
    """Beside an accuracy table: what always predicting the training split's commonest class scores on
    validation and test (``majority_class`` in results.json), and, in words, each configuration whose
    mean best validation accuracy does not beat it. Empty when no run records it or the metric is not
    accuracy."""
    if not configs or any(c.first.get("metric_name") != "accuracy" for c in configs):
        return ""
    below, val_rates, test_rates = [], set(), set()
    for c in configs:
        recorded = [r.get("majority_class") for r in c.runs]
        if not all(isinstance(m, dict) and isinstance(m.get("validation"), (int, float)) for m in recorded):
            return ""  # runs from before results.json recorded it: nothing to compare against
        val = statistics.fmean(m["validation"] for m in recorded)
        val_rates.add(round(val, 4))
        test_rates.update(round(m["test"], 4) for m in recorded if isinstance(m.get("test"), (int, float)))
        best = c.mean("best_metric")
        if best is None or best <= val + MAJORITY_EPS:
            below.append(f"{_display(c, configs)} ({_num(best)} vs {_num(val)})")

    def shown(values: set) -> str:
        return " to ".join(f"{v:.4f}" for v in sorted(values)) if values else "–"

    text = (f"Majority class (always predict the training split's commonest label): {shown(val_rates)} validation "
            f"accuracy, {shown(test_rates)} test. ")
    if below:
        return text + ("**Not above the majority class on validation** (mean best validation accuracy vs the "
                       "majority class): " + "; ".join(below) + ".")
    return text + "Every configuration above beats it on validation."


# -- matched budgets ----------------------------------------------------------------------------------
REFERENCE_METHOD, PARTNER_METHOD = "lora", "lsr"  # each LoRA configuration against the LSR closest in size
CONFIDENCE = 0.95


def quality_split(configs: list[Config]) -> str:
    """``test`` when every run of every configuration has the metric on the labelled test split (at its
    best epoch's weights), else ``validation`` (the best validation metric): one split per table."""
    return "test" if configs and all(len(c.test_values()) == len(c.runs) for c in configs) else "validation"


def quality_values(c: Config, split: str) -> list[float]:
    return c.test_values() if split == "test" else c.values("best_metric")


def welch_interval(a: list[float], b: list[float], confidence: float = CONFIDENCE):
    """Difference of means mean(b) − mean(a) with its Welch t interval (unequal variances); the
    interval is None with fewer than two values on a side."""
    from scipy import stats

    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, (diff, diff)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return diff, (diff - half, diff + half)


def verdict(interval, higher: bool = True) -> str:
    """better / worse when the whole interval is on one side of 0 (for the partner), else tie."""
    if interval is None:
        return "n/a (needs ≥ 2 seeds each)"
    lo, hi = interval if higher else (-interval[1], -interval[0])
    return "better" if lo > 0 else "worse" if hi < 0 else "tie"


def matched_budgets(configs: list[Config], metric: str) -> list[dict]:
    """For each LoRA configuration, the LSR configuration closest in adapter parameters (ratio; ties:
    the smaller), on the same base model, and LSR − LoRA on the report's split."""
    split = quality_split(configs)
    higher = higher_is_better(metric)
    refs = [c for c in configs if c.first.get("adaptation_type") == REFERENCE_METHOD]
    rows = []
    for ref in sorted(refs, key=lambda c: c.first.get("adapter_params") or 0):
        size = ref.first.get("adapter_params")
        partners = [c for c in configs if c.first.get("adaptation_type") == PARTNER_METHOD
                    and c.first.get("model_name") == ref.first.get("model_name")
                    and (c.first.get("adapter_params") or 0) > 0 and quality_values(c, split)]
        if not size or not partners or not quality_values(ref, split):
            continue
        partner = min(partners, key=lambda c: (abs(math.log(c.first["adapter_params"] / size)),
                                                c.first["adapter_params"]))
        a, b = quality_values(ref, split), quality_values(partner, split)
        diff, interval = welch_interval(a, b)
        rows.append({"reference": ref, "partner": partner, "split": split, "ref_values": a, "partner_values": b,
                     "diff": diff, "interval": interval, "verdict": verdict(interval, higher)})
    return rows


def md_matched_table(rows: list[dict], metric: str) -> str:
    head = ["LoRA", "adapter params", f"{rows[0]['split']} {metric} (n)", "closest LSR", "adapter params (% of LoRA)",
            f"{rows[0]['split']} {metric} (n)", f"LSR − LoRA [{CONFIDENCE:.0%} interval]", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ref, par = row["reference"], row["partner"]
        a, b = row["ref_values"], row["partner_values"]
        ci = row["interval"]
        cells = [ref.label or "–", _int(ref.first.get("adapter_params")), _mean_std(a) + f" ({len(a)})",
                 par.label or "–", f"{_int(par.first.get('adapter_params'))} "
                 f"({100 * par.first['adapter_params'] / ref.first['adapter_params']:.0f}%)",
                 _mean_std(b) + f" ({len(b)})",
                 f"{row['diff']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""), row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(v: list[float]) -> str:
    return f"{statistics.fmean(v):.4f}" + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else "")


# -- plots -------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "task"


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
    from matplotlib.figure import Figure

    colors = _method_colors(configs)
    # one method: tell its configurations apart by colour too, not by line style alone
    single = len(colors) == 1
    if single:
        from matplotlib import colormaps

        palette = colormaps["tab10"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    fig = Figure(figsize=(12, 4.8))
    ax_e, ax_t = fig.subplots(1, 2)
    drawn = 0
    seen_per_method: dict[str, int] = {}
    for c in configs:
        pts = curve(c, metric)
        if not pts:
            continue
        method = str(c.first.get("adaptation_type"))
        i = seen_per_method.get(method, 0)
        seen_per_method[method] = i + 1
        epochs = list(pts)
        mean = [pts[e][0] for e in epochs]
        lo, hi = [pts[e][1] for e in epochs], [pts[e][2] for e in epochs]
        times = [pts[e][3] for e in epochs]
        color = palette(i % 10) if single else colors[method]
        style = dict(color=color, linestyle=styles[i % len(styles)], marker=markers[i % len(markers)],
                     markersize=4, linewidth=1.6)
        label = f"{_display(c, configs)} (n={len(c.runs)})"
        ax_e.plot(epochs, mean, label=label, **style)
        ax_t.plot(times, mean, **style)
        if len(c.runs) > 1:
            ax_e.fill_between(epochs, lo, hi, color=color, alpha=0.12, linewidth=0)
            ax_t.fill_between(times, lo, hi, color=color, alpha=0.12, linewidth=0)
        drawn += 1
    if not drawn:
        return False
    ax_e.set_xlabel("epoch")
    ax_t.set_xlabel("wall-clock training time (s)")
    for ax in (ax_e, ax_t):
        ax.set_ylabel(f"validation {metric}")
        ax.grid(True, alpha=0.3)
    ax_e.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"{task}: validation {metric} during training (mean over seeds; band = min–max)")
    rows = math.ceil(drawn / 3)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 1))
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0), ncol=min(3, drawn), fontsize=8, frameon=False)
    _save(fig, path)
    return True


def pareto(points: list[tuple[float, float]], higher: bool = True) -> list[tuple[float, float]]:
    """The non-dominated points (no other point has ≤ parameters and a better metric), by size."""
    sign = 1 if higher else -1
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front


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
                   label=f"{_display(c, configs)} (n={len(quality_values(c, split))}, no adapter)")
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
    labels = [_display(c, configs) for c, _ in rows]
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


# -- the report --------------------------------------------------------------------------------------
REPORT_SUFFIX = "-report"  # the default output beside a finished run dir: RUN_DIR-report/


def output_dir(dirs: list[Path], out: Path | None = None) -> Path:
    """Where the report goes: ``out`` if given, else the first dir, except that a finished run dir
    (one holding results.json) is never written into: its report goes beside it, ``RUN_DIR-report/``.
    A sweep dir (its runs one level or more below) takes its report itself, as the sweep's end does.
    An ``out`` inside a finished run dir, or one that cannot be a directory, is refused."""
    from .outpaths import check_output_dir, finished_run_of

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
    for (task, metric), group in by_task(configs).items():
        md += [f"## {task} — validation {metric}", "", md_table(group), ""]
        devices = sorted({str(c.first.get("device")) for c in group})
        md += [f"Device: {', '.join(devices)}; seeds: "
               + "; ".join(f"{_display(c, group)}: {', '.join(map(str, c.seeds))}" for c in group), ""]
        matched = matched_budgets(group, metric)
        if matched:
            split = matched[0]["split"]
            md += [f"### Matched budgets: LSR vs LoRA, {split} {metric}", "",
                   f"Each LoRA configuration against the LSR configuration closest to it in adapter parameters "
                   f"(by ratio). Split: **{split}** ("
                   + ("the labelled test split, with each run's best-epoch weights" if split == "test" else
                      "the best validation metric of each run: not every run has test labels")
                   + f"). LSR − LoRA is the difference of the means over the seeds with its "
                   f"{CONFIDENCE:.0%} Welch t interval; better / worse when the whole interval favours / "
                   f"disfavours LSR, else tie.", "", md_matched_table(matched, metric), ""]
        if plots:
            slug = _slug(task if len({m for t, m in by_task(configs) if t == task}) == 1 else f"{task}_{metric}")
            for name, draw, args in (("curves", plot_curves, (group, task, metric)),
                                     ("frontier", plot_frontier, (group, task, metric)),
                                     ("frontier_trainable", partial(plot_frontier, x="trainable"),
                                      (group, task, metric)),
                                     ("memory", plot_memory, (group, task))):
                png = out / f"{name}_{slug}.png"
                if draw(*args, png):
                    written["plots"].append(png)
                    md += [f"![{name} {task}]({png.name})", ""]
    if not configs:
        md += ["No completed run yet.", ""]
    if problems:
        md += ["## Failed or unfinished jobs", "", "| job directory | status | reason |", "|---|---|---|"]
        md += [f"| `{_rel(p.path, out)}` | {p.status} | {p.reason.replace('|', '/')} |" for p in problems]
        md.append("")
    write_text(written["csv"], render_csv(csv_rows(configs, out)))
    write_text(written["md"], "\n".join(md))
    written.update(runs=len(runs), configs=len(configs), problems=problems)
    return written


def main(argv=None) -> None:
    from .cli import ArgumentParser, exit_on_user_error

    p = ArgumentParser(prog="python -m lsr_adapt.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write the report (default: the first dir; beside it, RUN_DIR-report/, "
                        "when that is a finished run dir)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args(argv)
    w = exit_on_user_error(build_report, args.dirs, args.out, plots=not args.no_plots)
    print(f"{w['md']}: {w['configs']} configuration(s) from {w['runs']} run(s); "
          f"{len(w['problems'])} failed/unfinished; {len(w['plots'])} plot(s) in {w['md'].parent}")


if __name__ == "__main__":
    main(sys.argv[1:])
