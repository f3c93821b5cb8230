"""The report's tables: report.csv's rows and report.md's configuration, majority-class and
matched-budget tables."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from .collect import Config, by_task, display, fmt_value
from .statistics import CONFIDENCE, SMALL_BUDGET, matched_budgets, small_budgets

CSV_COLUMNS = (
    "task", "metric", "method", "hyperparameters", "method_config", "base_model", "learning_rate", "batch_size",
    "epochs", "adapter_params", "head_params", "trainable_params", "total_params", "percent_trainable",
    "best_mean", "best_std", "n", "test_mean", "test_std", "seeds", "best_epoch_mean", "metric_before_mean", "train_time_s_mean",
    "examples_per_s_mean", "peak_memory_mb_mean", "peak_memory_kind", "precision", "device", "run_dirs",
    # LoRA rows: the LSR configuration closest in adapter parameters and LSR − LoRA (report.md's matched-budget table)
    "matched_budget_partner", "matched_budget_partner_adapter_params", "matched_budget_split",
    "matched_budget_diff", "matched_budget_ci_low", "matched_budget_ci_high", "matched_budget_verdict",
    # LoRA rows: the largest LSR configuration within 30% of its adapter parameters, and LSR − LoRA
    "small_budget_partner", "small_budget_partner_adapter_params", "small_budget_split",
    "small_budget_diff", "small_budget_ci_low", "small_budget_ci_high", "small_budget_verdict",
)


def _partner_columns(prefix: str, m: dict | None) -> dict:
    if m is None:
        return {}
    return {f"{prefix}_partner": f"{m['partner'].first.get('adaptation_type')} {m['partner'].label}".strip(),
            f"{prefix}_partner_adapter_params": m["partner"].first.get("adapter_params"),
            f"{prefix}_split": m["split"], f"{prefix}_diff": m["diff"],
            f"{prefix}_ci_low": m["interval"][0] if m["interval"] else None,
            f"{prefix}_ci_high": m["interval"][1] if m["interval"] else None,
            f"{prefix}_verdict": m["verdict"]}


def csv_rows(configs: list[Config], root: Path) -> list[dict]:
    tasks = by_task(configs).items()
    matched = {id(m["reference"]): m for (_, metric), group in tasks for m in matched_budgets(group, metric)}
    small = {id(m["reference"]): m for (_, metric), group in tasks for m in small_budgets(group, metric)}
    rows = []
    for c in configs:
        f = c.first
        match = {**_partner_columns("matched_budget", matched.get(id(c))),
                 **_partner_columns("small_budget", small.get(id(c)))}
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
            "device": f.get("device"), "run_dirs": " ".join(relative(d, root) for d in c.dirs), **match,
        })
    return rows


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def fmt_num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_int(v) -> str:
    return "–" if v is None else f"{int(v):,}"


def relative(p: Path, root: Path) -> str:
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
        best = fmt_num(c.mean("best_metric")) + (f" ± {std:.4f}" if std is not None else "")
        t_mean, t_std = c.test_mean_std()
        test = fmt_num(t_mean) + (f" ± {t_std:.4f}" if t_std is not None else "")
        pct = f.get("percent_trainable")
        trainable = fmt_int(f.get("trainable_params")) + (f" ({pct:.3f}%)" if isinstance(pct, (int, float)) else "")
        cells = [str(f.get("adaptation_type")), c.label or "–", str(f.get("model_name")),
                 fmt_value(f.get("learning_rate")), fmt_int(f.get("adapter_params")), fmt_int(f.get("head_params")),
                 trainable, best, str(len(c.runs)), test, fmt_num(c.mean("metric_before_training")),
                 fmt_num(c.mean("train_runtime_s"), 1), fmt_num(c.mean("examples_per_s"), 1),
                 fmt_num(c.mean("peak_memory_mb"), 0)]
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
            below.append(f"{display(c, configs)} ({fmt_num(best)} vs {fmt_num(val)})")

    def shown(values: set) -> str:
        return " to ".join(f"{v:.4f}" for v in sorted(values)) if values else "–"

    text = (f"Majority class (always predict the training split's commonest label): {shown(val_rates)} validation "
            f"accuracy, {shown(test_rates)} test. ")
    if below:
        return text + ("**Not above the majority class on validation** (mean best validation accuracy vs the "
                       "majority class): " + "; ".join(below) + ".")
    return text + "Every configuration above beats it on validation."


def md_matched_table(rows: list[dict], metric: str, partner: str = "closest LSR") -> str:
    head = ["LoRA", "adapter params", f"{rows[0]['split']} {metric} (n)", partner, "adapter params (% of LoRA)",
            f"{rows[0]['split']} {metric} (n)", f"LSR − LoRA [{CONFIDENCE:.0%} interval]", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ref, par = row["reference"], row["partner"]
        a, b = row["ref_values"], row["partner_values"]
        ci = row["interval"]
        share = 100 * par.first["adapter_params"] / ref.first["adapter_params"]
        cells = [ref.label or "–", fmt_int(ref.first.get("adapter_params")), mean_std(a) + f" ({len(a)})",
                 par.label or "–", f"{fmt_int(par.first.get('adapter_params'))} ({share:.1f}%)",
                 mean_std(b) + f" ({len(b)})",
                 f"{row['diff']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""), row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SMALL_TABLE_PARTNER = f"largest LSR ≤ {SMALL_BUDGET:.0%}"


def mean_std(v: list[float]) -> str:
    return f"{statistics.fmean(v):.4f}" + (f" ± {statistics.stdev(v):.4f}" if len(v) > 1 else "")
