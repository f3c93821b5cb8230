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
from lsr_adapt.report import Config, build_report, collect, curve, group_configs, pareto
from lsr_adapt.report import main as report_main

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
                     "memory_mrpc.png", "memory_sst2.png"]
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
    assert "3 configuration(s) from 6 run(s); 3 failed/unfinished; 6 plot(s)" in capsys.readouterr().out
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
