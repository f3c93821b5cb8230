"""The sweep report (src/lsr_adapt/report.py) on a fixture sweep directory with known numbers."""

from __future__ import annotations

import csv
import json
import math
import statistics
import struct
from pathlib import Path

import pytest

from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.report import build_report
from lsr_adapt.report.__main__ import main as report_main
from lsr_adapt.report.collect import Config, collect, display, group_configs
from lsr_adapt.report.plots import curve
from lsr_adapt.report.statistics import pareto

LORA = {"r": 8, "alpha": 8, "dropout": 0.0, "use_rslora": False}
LSR = {"r": 2, "num_terms": 16, "alpha": 2, "dropout": 0.0, "form": "sum", "path": "auto",
       "in_factors": None, "out_factors": None}


def fake_results(method, mc, seed, best, *, task="mrpc", metric="accuracy", adapter=2048, head=1122,
                 total=31074, before=0.5, runtime=10.0, eps=100.0, mem=600.0, history=None, status="completed"):
    """A results.json with the keys train.py writes (numbers chosen by the test)."""
    history = history if history is not None else [
        {"loss": 0.6, metric: best - 0.1, "epoch": 1, "step": 32, "elapsed_s": runtime / 2, "train_loss": 0.7},
        {"loss": 0.5, metric: best, "epoch": 2, "step": 64, "elapsed_s": runtime, "train_loss": 0.6},
    ]
    return {
        "adaptation_type": method, "model_name": "roberta-base (tiny random-init)", "task": task,
        "trainable_params": adapter + head, "adapter_params": adapter, "head_params": head, "total_params": total,
        "percent_trainable": 100.0 * (adapter + head) / total, "method_config": mc, "learning_rate": 0.01,
        "batch_size": 16, "num_train_epochs": 2.0, "seed": seed, "metric_name": metric,
        "metric_before_training": before, "metrics_before_training": {metric: before}, "eval_history": history,
        "best_metric": best, "best_epoch": 2, "test_metrics": None, "train_runtime_s": runtime,
        "examples_per_s": eps, "peak_memory_mb": mem, "peak_memory_kind": "cpu_max_rss", "precision": "fp32",
        "device": "cpu (x86_64)", "versions": {}, "status": status,
    }


def job(root: Path, name: str, results: dict | None = None, log: str | None = None) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("{}\n")
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    if log is not None:
        (d / "main.log").write_text(log)
    return d


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two tasks; LoRA with 3 seeds, LSR with 2 on mrpc; one failed, two unfinished jobs."""
    root = tmp_path / "sweep"
    for i, (seed, best) in enumerate([(0, 0.80), (1, 0.82), (2, 0.84)]):
        job(root, f"{i}_model=roberta_lora,training.seed={seed}",
            fake_results("lora", LORA, seed, best, runtime=10.0 + seed, mem=600 + 10 * seed))
    for i, (seed, best) in enumerate([(0, 0.70), (1, 0.76)]):
        job(root, f"{3 + i}_model=roberta_lsr,training.seed={seed}",
            fake_results("lsr", LSR, seed, best, adapter=3072, total=32098, runtime=8.0, eps=120.0))
    job(root, "5_data=sst2", fake_results("lora", LORA, 0, 0.90, task="sst2", before=0.55))
    job(root, "6_model=roberta_lsr,model.lsr.r=16",
        fake_results("lsr", LSR, 0, 0.0, status="failed") | {"error": "LSR rank r=16 exceeds the smallest factor"})
    job(root, "7_model=roberta_lsr,training.seed=9",
        log="[2026-01-01 00:00:00,000][lsr_adapt.cli][ERROR] - cannot load model 'nope': not found\n")
    job(root, "8_model=roberta_lora,training.seed=9")  # still running: no log, no results
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_tables_numbers_and_plots(sweep):
    w = build_report([sweep])
    assert (w["runs"], w["configs"]) == (6, 3)
    rows = read_csv(sweep / "report.csv")
    assert len(rows) == 3
    by = {(r["task"], r["method"]): r for r in rows}

    lora = by[("mrpc", "lora")]
    assert int(lora["n"]) == 3 and lora["seeds"] == "0 1 2"
    assert float(lora["best_mean"]) == pytest.approx(0.82)
    assert float(lora["best_std"]) == pytest.approx(0.02)  # sample std of 0.80, 0.82, 0.84
    assert float(lora["train_time_s_mean"]) == pytest.approx(11.0)
    assert float(lora["peak_memory_mb_mean"]) == pytest.approx(610.0)
    assert (int(lora["adapter_params"]), int(lora["head_params"]), int(lora["trainable_params"])) == (2048, 1122, 3170)
    assert float(lora["percent_trainable"]) == pytest.approx(100 * 3170 / 31074)
    assert lora["hyperparameters"] == "r=8 α=8"

    lsr = by[("mrpc", "lsr")]
    assert int(lsr["n"]) == 2
    assert float(lsr["best_mean"]) == pytest.approx(0.73)
    assert float(lsr["best_std"]) == pytest.approx(statistics.stdev([0.70, 0.76])) == pytest.approx(0.06 / math.sqrt(2))
    assert float(lsr["examples_per_s_mean"]) == pytest.approx(120.0)
    assert lsr["hyperparameters"] == "r=2 t=16 α=2"

    sst2 = by[("sst2", "lora")]
    assert int(sst2["n"]) == 1 and sst2["best_std"] == ""  # no spread from one seed
    assert float(sst2["metric_before_mean"]) == pytest.approx(0.55)

    md = (sweep / "report.md").read_text()
    assert "## mrpc — validation accuracy" in md and "## sst2 — validation accuracy" in md
    assert "0.8200 ± 0.0200" in md and "0.7300 ± 0.0424" in md and "| 0.9000 |" in md
    assert "3,170 (10.201%)" in md
    # failures are listed with their reasons, not fatal
    assert "## Failed or unfinished jobs" in md
    assert "LSR rank r=16 exceeds the smallest factor" in md
    assert "failed: cannot load model 'nope': not found" in md
    assert "`8_model=roberta_lora,training.seed=9` | unfinished | no results.json" in md
    assert len(w["problems"]) == 3

    names = sorted(p.name for p in w["plots"])
    assert names == ["curves_mrpc.png", "curves_sst2.png", "frontier_mrpc.png", "frontier_sst2.png",
                     "frontier_trainable_mrpc.png", "frontier_trainable_sst2.png", "memory_mrpc.png", "memory_sst2.png"]
    for p in w["plots"]:
        width, height = png_size(p)
        assert width > 400 and height > 100
        assert f"]({p.name})" in md
    assert not list(sweep.glob(".*.tmp")), "temp files left behind"


def test_report_out_dir_and_several_inputs(sweep, tmp_path):
    other = tmp_path / "other_run"
    job(other, ".", fake_results("lora", LORA, 5, 0.86))  # a single run dir (outputs/...) counts too
    out = tmp_path / "cmp"
    w = build_report([sweep, other], out=out)
    assert w["md"] == out / "report.md" and not (sweep / "report.md").exists()
    lora = next(r for r in read_csv(out / "report.csv") if r["task"] == "mrpc" and r["method"] == "lora")
    assert int(lora["n"]) == 4  # the extra seed joins its configuration
    assert float(lora["best_mean"]) == pytest.approx(statistics.fmean([0.80, 0.82, 0.84, 0.86]))


def test_configs_differ_by_everything_but_the_seed(tmp_path):
    root = tmp_path / "s"
    job(root, "a", fake_results("lsr", LSR, 0, 0.7))
    job(root, "b", fake_results("lsr", LSR | {"num_terms": 8}, 0, 0.6))
    job(root, "c", fake_results("lsr", LSR, 1, 0.8) | {"learning_rate": 0.001})
    job(root, "d", fake_results("lsr", LSR, 1, 0.9))
    configs = group_configs(collect([root])[0])
    assert sorted(len(c.runs) for c in configs) == [1, 1, 2]
    assert {c.label for c in configs} == {"r=2 t=16 α=2", "r=2 t=8 α=2"}
    # a run continued from another (init_from) is another configuration
    job(root, "e", fake_results("lsr", LSR, 0, 0.9) | {"init_from": {"path": "/x/stage1", "head_loaded": True}})
    assert len(group_configs(collect([root])[0])) == 4
    # so is a head that reads the mean of the hidden states instead of [CLS] (model.pooling)
    job(root, "f", fake_results("lsr", LSR, 0, 0.9) | {"pooling": "mean"})
    configs = group_configs(collect([root])[0])
    assert len(configs) == 5 and "pool=mean" in display(next(c for c in configs if c.first.get("pooling")), configs)


def test_curve_aggregates_seeds_per_epoch():
    runs = [fake_results("lora", LORA, s, 0, history=[
        {"accuracy": a, "epoch": e, "elapsed_s": t} for e, (a, t) in enumerate(h, start=1)])
        for s, h in enumerate([[(0.5, 1.0), (0.7, 2.0)], [(0.6, 3.0), (0.9, 4.0)], [(0.4, 2.0)]])]
    c = Config(key=(), runs=runs)
    pts = curve(c, "accuracy")
    assert pts[1] == pytest.approx((0.5, 0.4, 0.6, 2.0))  # mean, min, max, mean elapsed over 3 seeds
    assert pts[2] == pytest.approx((0.8, 0.7, 0.9, 3.0))  # the third run stopped after epoch 1


def test_pareto_front():
    pts = [(100, 0.7), (200, 0.65), (300, 0.8), (300, 0.75), (1000, 0.8), (2000, 0.9)]
    assert pareto(pts) == [(100, 0.7), (300, 0.8), (2000, 0.9)]
    # perplexity: lower is better
    assert pareto([(100, 30.0), (200, 25.0), (300, 28.0), (400, 20.0)], higher=False) == [
        (100, 30.0), (200, 25.0), (400, 20.0)]


def test_only_failures_still_writes_a_report(tmp_path):
    root = tmp_path / "s"
    job(root, "0_x")
    w = build_report([root])
    assert w["configs"] == 0 and len(w["problems"]) == 1
    assert "No completed run yet." in w["md"].read_text()
    assert read_csv(root / "report.csv") == []


def test_unreadable_results_are_listed(tmp_path):
    root = tmp_path / "s"
    job(root, "0_ok", fake_results("lora", LORA, 0, 0.8))
    bad = job(root, "1_bad")
    (bad / "results.json").write_text('{"truncated": ')
    w = build_report([root], plots=False)
    assert [p.status for p in w["problems"]] == ["unreadable"]
    assert w["configs"] == 1 and w["plots"] == []


def test_empty_and_missing_dirs_are_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LsrAdaptError, match="nothing to report"):
        build_report([empty])
    with pytest.raises(LsrAdaptError, match="is not a directory"):
        build_report([tmp_path / "nope"])
    with pytest.raises(SystemExit) as exc:  # the CLI: one `error:` line, exit status 2, no traceback
        report_main([str(empty)])
    assert exc.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    errors = [ln for ln in out.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "nothing to report" in errors[0] and "Traceback" not in out.err


def test_cli_writes_the_report(sweep, tmp_path, capsys):
    report_main([str(sweep), "--out", str(tmp_path / "r")])
    assert "3 configuration(s) from 6 run(s); 3 failed/unfinished; 8 plot(s)" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "frontier_mrpc.png").exists()


def test_test_split_metric_is_aggregated_over_seeds(tmp_path):
    root = tmp_path / "sweep"
    for seed, acc in [(0, 0.70), (1, 0.80)]:
        r = fake_results("lora", LORA, seed, 0.9)
        r["test_metrics"] = {"accuracy": acc, "f1": 0.5, "loss": 0.4}
        job(root, f"{seed}", r)
    written = build_report([root], plots=False)
    md = written["md"].read_text()
    assert f"0.7500 ± {statistics.stdev([0.70, 0.80]):.4f}" in md and "test (mean ± std)" in md
    row = next(csv.DictReader(written["csv"].open()))
    assert float(row["test_mean"]) == pytest.approx(0.75) and float(row["test_std"]) == pytest.approx(0.0707107, abs=1e-6)


# -- the frontier report (issue 16): adapter-parameter x axis, matched budgets ------------------------
def _frontier_sweep(root: Path, with_test: bool = True) -> Path:
    """LoRA r=1/4/8 and LSR at 1,920 / 9,600 / 36,480 / 72,960 adapter parameters plus head-only,
    with test accuracies chosen so that the matched-budget verdicts are better / worse / tie."""
    points = [
        ("lora", LORA | {"r": 1}, 9216, [0.70, 0.72, 0.74]),
        ("lora", LORA | {"r": 4}, 36864, [0.85, 0.86, 0.87]),
        ("lora", LORA | {"r": 8}, 73728, [0.80, 0.81, 0.82, 0.83, 0.84]),
        ("lsr", LSR | {"r": 1, "num_terms": 2}, 1920, [0.60, 0.62]),
        ("lsr", LSR | {"num_terms": 5}, 9600, [0.75, 0.77, 0.79]),
        ("lsr", LSR | {"num_terms": 19}, 36480, [0.70, 0.71, 0.72]),
        ("lsr", LSR | {"num_terms": 38}, 72960, [0.78, 0.79, 0.80, 0.81, 0.82]),
        ("head", {}, 0, [0.71, 0.72, 0.73]),
    ]
    k = 0
    for method, mc, adapter, accs in points:
        for seed, acc in enumerate(accs, start=1):
            r = fake_results(method, mc, seed, best=acc - 0.05, adapter=adapter, head=148610)
            if with_test or k % 7:
                r["test_metrics"] = {"accuracy": acc, "loss": 0.5}
            job(root, f"{k}", r)
            k += 1
    return root


def test_matched_budget_table_against_hand_computed_welch_intervals(tmp_path):
    from scipy import stats

    root = _frontier_sweep(tmp_path / "s")
    w = build_report([root])
    md = w["md"].read_text()
    assert "### Matched budgets: LSR vs LoRA, test accuracy" in md and "Split: **test**" in md
    # LoRA r=1 vs LSR t=5 (9,600: closest by ratio, not 1,920): 0.77 − 0.72, both variances 0.0004, n=3 → df 4
    half = 2.7764451 * math.sqrt(0.0004 / 3 + 0.0004 / 3)
    assert half == pytest.approx(0.0453393, abs=1e-6)
    assert f"| r=1 α=8 | 9,216 | 0.7200 ± 0.0200 (3) | r=2 t=5 α=2 | 9,600 (104.2%) | 0.7700 ± 0.0200 (3) | " \
           f"+0.0500 [{0.05 - half:+.4f}, {0.05 + half:+.4f}] | better |" in md
    # LoRA r=4 vs LSR t=19: −0.15, interval all below 0 → worse; LoRA r=8 vs t=38: −0.02, df 8 → tie
    assert "| r=4 α=8 | 36,864 |" in md and "| -0.1500 [-0.1727, -0.1273] | worse |" in md
    half8 = 2.3060041 * 0.01
    assert f"| -0.0200 [{-0.02 - half8:+.4f}, {-0.02 + half8:+.4f}] | tie |" in md

    rows = {(r["method"], r["hyperparameters"]): r for r in read_csv(root / "report.csv")}
    lora1 = rows[("lora", "r=1 α=8")]
    assert lora1["matched_budget_partner"] == "lsr r=2 t=5 α=2"
    assert int(lora1["matched_budget_partner_adapter_params"]) == 9600 and lora1["matched_budget_split"] == "test"
    assert float(lora1["matched_budget_diff"]) == pytest.approx(0.05)
    # scipy's Welch test gives the same interval
    ci = stats.ttest_ind([0.75, 0.77, 0.79], [0.70, 0.72, 0.74], equal_var=False).confidence_interval(0.95)
    assert (float(lora1["matched_budget_ci_low"]), float(lora1["matched_budget_ci_high"])) == pytest.approx(
        (ci.low, ci.high))
    lora8 = rows[("lora", "r=8 α=8")]
    ci8 = stats.ttest_ind([0.78, 0.79, 0.80, 0.81, 0.82], [0.80, 0.81, 0.82, 0.83, 0.84],
                          equal_var=False).confidence_interval(0.95)
    assert (float(lora8["matched_budget_ci_low"]), float(lora8["matched_budget_ci_high"])) == pytest.approx(
        (ci8.low, ci8.high))
    assert [rows[("lora", f"r={r} α=8")]["matched_budget_verdict"] for r in (1, 4, 8)] == ["better", "worse", "tie"]
    assert all(r["matched_budget_verdict"] == "" for r in rows.values() if r["method"] != "lora")
    # both frontier plots, and they differ (adapter vs adapter + head on the x axis)
    adapter, trainable = root / "frontier_mrpc.png", root / "frontier_trainable_mrpc.png"
    assert adapter in w["plots"] and trainable in w["plots"]
    assert adapter.read_bytes() != trainable.read_bytes() and png_size(adapter)[0] > 400


def test_matched_budgets_fall_back_to_validation_and_say_so(tmp_path):
    root = _frontier_sweep(tmp_path / "s", with_test=False)  # some runs have no test labels
    md = build_report([root], plots=False)["md"].read_text()
    assert "### Matched budgets: LSR vs LoRA, validation accuracy" in md and "Split: **validation**" in md
    # best validation = test − 0.05 here, so the differences are the same numbers
    assert "| r=1 α=8 | 9,216 | 0.6700 ± 0.0200 (3) |" in md and "+0.0500" in md


def test_welch_interval_and_verdicts():
    from scipy import stats

    from lsr_adapt.report.statistics import verdict, welch_interval

    a, b = [0.1, 0.4, 0.35, 0.2], [0.5, 0.55, 0.45]
    diff, (lo, hi) = welch_interval(a, b)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(statistics.fmean(b) - statistics.fmean(a))
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert welch_interval([0.5], [0.6, 0.7]) == (pytest.approx(0.15), None)  # one seed: no interval
    assert welch_interval([0.5, 0.5], [0.6, 0.6]) == (pytest.approx(0.1), (pytest.approx(0.1), pytest.approx(0.1)))
    assert verdict((0.01, 0.2)) == "better" and verdict((-0.2, -0.01)) == "worse" and verdict((-0.1, 0.1)) == "tie"
    # perplexity: lower is better, so an interval below 0 favours the partner
    assert verdict((-3.0, -1.0), higher=False) == "better" and verdict((1.0, 3.0), higher=False) == "worse"
    assert verdict(None).startswith("n/a")


def test_frontier_labels_do_not_overlap():
    from matplotlib.figure import Figure

    from lsr_adapt.report.plots import place_labels

    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    ax.set_xscale("log")
    # fourteen configurations crowded the way a real frontier is: near-equal sizes and metrics
    items = [(x, y, f"lsr r=2 t={t} α=64 (n=5)", "C0") for t, (x, y) in enumerate(
        [(9216, 0.78), (9600, 0.781), (18432, 0.79), (19200, 0.789), (21120, 0.79), (30720, 0.795), (36480, 0.79),
         (36864, 0.792), (72960, 0.80), (73728, 0.801), (1920, 0.75), (3840, 0.76), (147456, 0.80), (147840, 0.80)])]
    ax.plot([i[0] for i in items], [i[1] for i in items], "o")
    ax.set_xlim(1000, 300000)
    ax.set_ylim(0.74, 0.81)
    texts = place_labels(ax, items)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(boxes) == len(items)
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps, overlaps


# -- the majority class beside an accuracy table (issue 25) -------------------------------------------
def test_configurations_not_above_the_majority_class_are_named_beside_the_table(tmp_path):
    """results.json's majority_class (always predict train's commonest label) is stated beside the
    table, and a configuration whose mean best validation accuracy does not beat it is named in words;
    one that beats it on one seed only is judged by its mean, one exactly at it does not beat it."""
    root = tmp_path / "sweep"
    majority = {"label": 1, "validation": 0.625, "test": 0.75}  # 5 of 8, 6 of 8
    for seed, best in [(0, 0.875), (1, 0.75)]:  # mean 0.8125 > 0.625
        job(root, f"lora{seed}", fake_results("lora", LORA, seed, best) | {"majority_class": majority})
    for seed, best in [(0, 0.75), (1, 0.375)]:  # mean 0.5625 < 0.625 though seed 0 beats it
        job(root, f"lsr{seed}", fake_results("lsr", LSR, seed, best, adapter=3072) | {"majority_class": majority})
    job(root, "head", fake_results("head", {}, 0, 0.625, adapter=0) | {"majority_class": majority})  # at it
    md = build_report([root], plots=False)["md"].read_text()
    note = next(line for line in md.splitlines() if line.startswith("Majority class"))
    assert "0.6250 validation accuracy, 0.7500 test" in note
    named = note.split("**Not above the majority class on validation**")[1]
    assert "lsr r=2 t=16 α=2 (0.5625 vs 0.6250)" in named and "head (0.6250 vs 0.6250)" in named
    assert "lora" not in named
    # the note sits right below its table
    lines = md.splitlines()
    assert lines[lines.index(note) - 1] == "" and lines[lines.index(note) - 2].startswith("| ")

    beaten = tmp_path / "beaten"
    job(beaten, "lora0", fake_results("lora", LORA, 0, 0.875) | {"majority_class": majority})
    md = build_report([beaten], plots=False)["md"].read_text()
    assert "Every configuration above beats it on validation." in md and "Not above" not in md


def test_no_majority_note_without_the_record_or_for_other_metrics(tmp_path):
    """Runs from before results.json recorded majority_class, and non-accuracy metrics (a majority
    class has no Matthews correlation to compare), get no note rather than a made-up one."""
    old = tmp_path / "old"
    job(old, "lora0", fake_results("lora", LORA, 0, 0.5))
    assert "Majority class" not in build_report([old], plots=False)["md"].read_text()
    mcc = tmp_path / "mcc"
    job(mcc, "lora0", fake_results("lora", LORA, 0, 0.1, metric="matthews_correlation")
        | {"majority_class": {"label": 1, "validation": 0.7, "test": 0.7}})
    assert "Majority class" not in build_report([mcc], plots=False)["md"].read_text()


def test_small_budget_table_is_the_largest_lsr_within_30_percent(tmp_path):
    """The seed's claim in one table: each LoRA configuration against the largest LSR configuration
    with at most 30% of its adapter parameters, with the Welch interval computed here by hand."""
    from scipy import stats

    root = _frontier_sweep(tmp_path / "s")
    md = build_report([root], plots=False)["md"].read_text()
    assert "### LSR at ≤ 30% of LoRA's budget: LSR vs LoRA, test accuracy" in md
    rows = {(r["method"], r["hyperparameters"]): r for r in read_csv(root / "report.csv")}
    # r=1 (9,216): 30% is 2,764, so t=2 (1,920), not t=5 (9,600); r=4 and r=8: t=5 (26.0% and 13.0%)
    assert [rows[("lora", f"r={r} α=8")]["small_budget_partner"] for r in (1, 4, 8)] == [
        "lsr r=1 t=2 α=2", "lsr r=2 t=5 α=2", "lsr r=2 t=5 α=2"]
    assert "| r=4 α=8 | 36,864 | 0.8600 ± 0.0100 (3) | r=2 t=5 α=2 | 9,600 (26.0%) |" in md
    # Welch by hand: LSR [0.75, 0.77, 0.79] − LoRA r=4 [0.85, 0.86, 0.87]
    va, vb = 0.0001 / 3, 0.0004 / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    lora4 = rows[("lora", "r=4 α=8")]
    assert float(lora4["small_budget_diff"]) == pytest.approx(-0.09)
    # 1e-9: the two computations differ only in float rounding of the same formula
    assert (float(lora4["small_budget_ci_low"]), float(lora4["small_budget_ci_high"])) == pytest.approx(
        (-0.09 - half, -0.09 + half), abs=1e-9)
    assert lora4["small_budget_verdict"] == "worse"
    assert all(r["small_budget_partner"] == "" for r in rows.values() if r["method"] != "lora")
