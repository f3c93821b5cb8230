"""experiment=frontier (issue 16): LoRA r ∈ {1, 2, 4, 8, 16} and LSR from about 2k to 80k adapter
parameters (each LoRA rank's equal-budget partner included) on MiniLM-L6 / binary drug reviews at
demo_full's settings, seeds 1-5, the report at the end. Checked by composing every job (no training);
with ``-m slow``, a two-point frontier end to end on the real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT, compose, sweeper_params

from lsr_adapt.budget import match_lsr, real_size

LORA_RANKS = [1, 2, 4, 8, 16]
LSR_POINTS = [(1, 2), (1, 4), (2, 5), (2, 10), (2, 11), (4, 8), (2, 19), (2, 38), (2, 77)]
POINTS = [f"frontier/lora_r{r}" for r in LORA_RANKS] + [f"frontier/lsr_r{r}_t{t}" for r, t in LSR_POINTS]


def test_the_sweep_is_every_point_times_five_seeds():
    params = sweeper_params("experiment=frontier")
    assert params["model"].replace(" ", "").split(",") == POINTS
    assert params["training.seed"] == "1,2,3,4,5"


@pytest.mark.parametrize("point", POINTS)
def test_each_point_composes_at_demo_full_settings(point, minilm_shapes):
    cfg = compose("experiment=frontier", f"model={point}", "training.seed=3")
    m = cfg.model
    assert m.name_or_path == "sentence-transformers/all-MiniLM-L6-v2" and m.asset == "minilm" and m.pooling == "cls"
    assert cfg.data.name == "drug_reviews" and cfg.data.max_length == 256
    assert cfg.training.num_train_epochs == 15 and cfg.training.sampling == "group_by_length"
    assert cfg.training.learning_rate == pytest.approx(1e-3) and cfg.training.seed == 3
    assert cfg.logger.name == "none"
    method = m.adaptation_type
    assert set(k for k in m if k in ("lora", "lsr")) == {method}  # one method section only
    values = dict(m[method])
    if method == "lora":
        r = int(point.split("_r")[1])
        assert (values["r"], values["alpha"]) == (r, 16)
        assert real_size("lora", minilm_shapes, values) == 9216 * r
    else:
        r, t = (int(x) for x in point.removeprefix("frontier/lsr_r").split("_t"))
        assert (values["r"], values["num_terms"], values["alpha"]) == (r, t, 64)
        assert real_size("lsr", minilm_shapes, values) == 960 * r * t
    # the same point outside the experiment is the same adapter (the experiment adds only settings)
    assert dict(compose(f"model={point}").model[method]) == values


def test_the_points_span_2k_to_80k_and_hold_each_lora_ranks_partner(minilm_shapes):
    lsr_sizes = {(r, t): real_size("lsr", minilm_shapes, {"r": r, "num_terms": t}) for r, t in LSR_POINTS}
    assert min(lsr_sizes.values()) <= 2_000 and max(s for s in lsr_sizes.values() if s <= 80_000) >= 70_000
    for r in LORA_RANKS:  # what budget.params=<LoRA r's size> picks for LSR (r=2, num_terms free)
        match = match_lsr(minilm_shapes, real_size("lora", minilm_shapes, {"r": r}), {"r": 2, "num_terms": 16})
        partner = (match.values["r"], match.values["num_terms"])
        assert partner in lsr_sizes, (r, partner)
        assert abs(lsr_sizes[partner] / (9216 * r) - 1) < 0.05


@pytest.mark.slow
def test_two_point_frontier_end_to_end_on_real_data(tmp_path):
    """LoRA r=1 and its equal-budget LSR partner, 1 epoch on a sample of the real reviews, through
    main.py and the report callback (a couple of minutes on 2 CPU cores)."""
    from lsr_adapt import assets

    assets.fetch(["minilm", "drug_reviews"], quiet=True)
    sweep = tmp_path / "frontier"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "-m", "experiment=frontier",
         "model=frontier/lora_r1,frontier/lsr_r2_t5", "training.seed=1", "training.num_train_epochs=1",
         "data.max_train_samples=128", "data.max_eval_samples=128", "data.max_length=64",
         "training.checkpoint_every=null", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((json.loads(p.read_text()) for p in sweep.glob("*/results.json")),
                     key=lambda r: r["adaptation_type"])
    assert [(r["adaptation_type"], r["adapter_params"]) for r in results] == [("lora", 9216), ("lsr", 9600)]
    assert all(r["test_metrics"] and "accuracy" in r["test_metrics"] for r in results)
    md = (sweep / "report.md").read_text()
    assert "Matched budgets" in md and "test accuracy" in md
    assert (sweep / "frontier_drug_reviews.png").is_file() and (sweep / "frontier_trainable_drug_reviews.png").is_file()
    rows = (sweep / "report.csv").read_text()
    assert "matched_budget" in rows

