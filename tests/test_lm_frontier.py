"""experiment=lm_frontier (issue 24): SmolLM2-135M on the drug-review texts, LoRA r ∈ {1..32} and LSR
at the matched budget of each rank and at 25-28.6% of it, every job the same 32-step budget; each
method's lr and α from its validation grid (experiment=lm_frontier/tuning, seed 0). Checked by
composing every job (no training) and on the real layer classes; with ``-m slow``, a three-point
version end to end on the real model and texts."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, compose, sweeper_params

from lsr_adapt.budget import real_size, target_shapes

LORA_RANKS = [1, 2, 4, 8, 16, 32]
LSR_TERMS = [2, 4, 7, 14, 28, 56, 112, 224]
POINTS = [f"lm_frontier/lora_r{r}" for r in LORA_RANKS] + [f"lm_frontier/lsr_t{t}" for t in LSR_TERMS]
LORA_PER_RANK = 305_280  # 30 layers × (576+576 + 576+192 + 576+192 + 576+576 + 3 × (576+1536))
LSR_PER_TERM = 43_680    # 30 layers × r=2 × (24+24+24+24 + 2 × (24+24+16+12) + 24+24+24+24 + 3 × (48+32+24+24))


@pytest.fixture(scope="module")
def smollm2_shapes():
    """SmolLM2-135M's attention and MLP projections (its config: hidden 576, 9 heads of which 3 hold
    keys / values, FFN 1536, 30 layers), built on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return target_shapes(model, "all-linear", exclude=["lm_head"])  # as a run applies it: the head stays frozen


def test_the_sweep_is_every_point_times_two_seeds():
    params = sweeper_params("experiment=lm_frontier")
    assert params["model"].replace(" ", "").split(",") == POINTS
    assert params["training.seed"] == "1,2"  # seed 0 tuned: it plays no part in the frontier


@pytest.mark.parametrize("point", POINTS)
def test_each_point_composes_at_the_fixed_step_budget(point, smollm2_shapes):
    cfg = compose("experiment=lm_frontier", f"model={point}", "training.seed=2")
    m, d, t = cfg.model, cfg.data, cfg.training
    assert m.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct" and m.asset == "smollm2"
    assert m.target_modules == "all-linear" and len(smollm2_shapes) == 30 * 7
    assert d.name == "drug_reviews_lm" and d.max_length == 128 and d.sample_seed == 0
    # the budget every job shares: one pass over 128 blocks of 128 tokens in batches of 4 = 32 steps
    assert (d.max_train_samples, t.batch_size, t.num_train_epochs, t.gradient_accumulation_steps) == (128, 4, 1, 1)
    assert d.max_eval_samples == 32 and t.seed == 2 and cfg.logger.name == "none"
    method = m.adaptation_type
    assert set(k for k in m if k in ("lora", "lsr")) == {method}
    values = dict(m[method])
    base = compose(f"model=lm_frontier/{method}").model  # the method's tuned lr and α, one file
    assert float(t.learning_rate) == float(base.lr) and values["alpha"] == base[method].alpha
    if method == "lora":
        r = int(point.split("_r")[1])
        assert values["r"] == r and real_size("lora", smollm2_shapes, values) == LORA_PER_RANK * r
    else:
        terms = int(point.split("_t")[1])
        assert (values["r"], values["num_terms"]) == (2, terms)
        assert real_size("lsr", smollm2_shapes, values) == LSR_PER_TERM * terms


def test_each_lora_rank_has_a_matched_and_a_small_lsr_partner():
    lsr = {t: LSR_PER_TERM * t for t in LSR_TERMS}
    for r in LORA_RANKS:
        size = LORA_PER_RANK * r
        assert any(abs(s / size - 1) < 0.005 for s in lsr.values()), r  # t = 7r: 100.2%
        small = max(s for s in lsr.values() if s <= 0.30 * size)
        assert 0.25 <= small / size <= 0.30, r  # the report's ≤ 30% table meets 25-28.6%, not less


def test_the_tuning_is_the_full_grid_per_method_at_seed_zero():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lsr_adapt.hpo import distributions_from_overrides, grid_sampler_config, method_space

    for point, alpha_key in (("lm_frontier/lora_r4", "model.lora.alpha"), ("lm_frontier/lsr_t28", "model.lsr.alpha")):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose(config_name="config", return_hydra_config=True,
                                overrides=["experiment=lm_frontier/tuning", f"model={point}"])
        sweeper = cfg.hydra.sweeper
        assert sweeper.sampler._target_ == "optuna.samplers.GridSampler" and sweeper.pruner is None
        assert cfg.training.seed == 0 and sweeper.n_trials == 6
        dists, fixed = distributions_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
        assert not fixed
        dists.update(method_space(cfg))
        space = grid_sampler_config(OmegaConf.create(OmegaConf.to_container(sweeper.sampler)), dists)["search_space"]
        assert sorted(space) == sorted(["training.learning_rate", alpha_key])
        grid = {(float(lr), float(a)) for lr, a in itertools.product(space["training.learning_rate"], space[alpha_key])}
        assert grid == {(lr, a) for lr in (3e-4, 1e-3, 3e-3) for a in (16, 64)}
        # a real Optuna study on that sampler asks for each grid point once in n_trials asks
        import optuna

        study = optuna.create_study(sampler=instantiate(grid_sampler_config(
            OmegaConf.to_container(sweeper.sampler), dists)))
        from lsr_adapt.hpo import grid_points_left

        asked = set()
        for i in range(int(sweeper.n_trials)):
            assert grid_points_left(study, dists) == 6 - i
            trial = study.ask(fixed_distributions=dists)
            asked.add((float(trial.params["training.learning_rate"]), float(trial.params[alpha_key])))
            try:
                study.tell(trial, 1.0)
            except RuntimeError as e:  # the last point: GridSampler's study.stop() outside optimize()
                assert i == 5 and "Study.stop" in str(e)
        assert asked == grid and grid_points_left(study, dists) == 0


def test_the_grid_sampler_needs_choices():
    from optuna.distributions import FloatDistribution

    from lsr_adapt.errors import LsrAdaptError
    from lsr_adapt.hpo import grid_sampler_config

    with pytest.raises(LsrAdaptError, match="not a choice: training.learning_rate"):
        grid_sampler_config({"_target_": "optuna.samplers.GridSampler"},
                            {"training.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)})
    tpe = {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    assert grid_sampler_config(tpe, {}) is tpe  # any other sampler as given


@pytest.mark.slow
def test_three_point_lm_frontier_end_to_end_on_the_real_model(tmp_path):
    """LoRA r=1, its matched LSR (t=7) and its 28.6% LSR (t=2) on SmolLM2-135M and the real review
    texts, through main.py, the parallel launcher and the report callback, at a tiny budget (2 steps of
    4 blocks of 32 tokens): a few minutes on 2 CPU cores, most of it loading the model."""
    pytest.importorskip("gguf")
    from lsr_adapt import assets

    assets.fetch(["smollm2", "drug_reviews"], quiet=True)
    sweep = tmp_path / "lm_frontier"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "experiment=lm_frontier",
         "model=lm_frontier/lora_r1,lm_frontier/lsr_t7,lm_frontier/lsr_t2", "training.seed=1,2",
         "data.max_train_samples=8", "data.max_eval_samples=4", "data.max_length=32", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert sorted((r["adaptation_type"], r["adapter_params"], r["seed"]) for r in results) == sorted(
        (m, n, s) for m, n in (("lora", LORA_PER_RANK), ("lsr", 7 * LSR_PER_TERM), ("lsr", 2 * LSR_PER_TERM))
        for s in (1, 2))
    assert all(r["metric_name"] == "perplexity" and r["test_metrics"]["perplexity"] > 1 for r in results)
    md = (sweep / "report.md").read_text()
    assert "### Matched budgets: LSR vs LoRA, test perplexity" in md
    assert "### LSR at ≤ 30% of LoRA's budget: LSR vs LoRA, test perplexity" in md
    assert "| r=1 α=16 | 305,280 |" in md and "87,360 (28.6%)" in md and "305,760 (100.2%)" in md
    assert (sweep / "frontier_drug_reviews_lm.png").is_file()
