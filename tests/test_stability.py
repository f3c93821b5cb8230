"""experiment=lsr_stability / lsr_stability_test (issue 16, part 2): the search reads validation only,
every LSR candidate is within 30% of LoRA r=8's adapter parameters, and the report runs on the test
split with seeds that played no part in the choice; experiment=smollm2_drug_reviews (part 4) compares
LoRA with LSR at its budget and under 30% of it. Checked by composing every job (no training)."""

from __future__ import annotations

import pytest
from helpers import compose, sweeper_params

from lsr_adapt.budget import lora_size, real_size

SEARCH = sweeper_params("experiment=lsr_stability")
SEARCH_MODELS = SEARCH["model"].replace(" ", "").split(",")


def _adapter_params(cfg, shapes) -> int:
    method = cfg.model.adaptation_type
    return real_size(method, shapes, dict(cfg.model[method]))  # lsr_plus: LSR layers, another optimizer


def test_the_search_is_lora_and_ten_lsr_candidates_over_seeds_1_to_5():
    assert SEARCH_MODELS[0] == "minilm_lora" and len(SEARCH_MODELS) == 10  # + the warmup command: eleven
    assert SEARCH["training.seed"] == "1,2,3,4,5"


@pytest.mark.parametrize("model", SEARCH_MODELS)
def test_search_jobs_never_load_the_test_split(model):
    cfg = compose("experiment=lsr_stability", f"model={model}", "training.seed=1")
    assert cfg.data.splits.test is None and cfg.data.validation_from_train == 0.2
    assert cfg.data.name == "drug_reviews" and cfg.training.num_train_epochs == 15 and cfg.data.max_length == 256


@pytest.mark.parametrize("model", SEARCH_MODELS[1:])
def test_every_lsr_candidate_is_within_30_percent_of_lora_r8(model, minilm_shapes):
    cfg = compose("experiment=lsr_stability", f"model={model}")
    assert cfg.model.adaptation_type in ("lsr", "lsr_plus")
    assert _adapter_params(cfg, minilm_shapes) <= 0.30 * lora_size(minilm_shapes, 8) == 0.30 * 73_728


def test_the_report_uses_fresh_seeds_on_the_test_split(minilm_shapes):
    params = sweeper_params("experiment=lsr_stability_test")
    assert params["model"].split(",") == ["minilm_lora", "stability/lsr_r4_t5", "stability/lsr_r2_t11"]
    fresh = {int(s) for s in params["training.seed"].split(",")}
    assert len(fresh) == 5 and not fresh & {int(s) for s in SEARCH["training.seed"].split(",")}
    cfg = compose("experiment=lsr_stability_test", "model=stability/lsr_r4_t5", "training.seed=101")
    assert cfg.data.splits.test == "test" and _adapter_params(cfg, minilm_shapes) == 19_200


def test_the_demo_runs_the_chosen_lsr(minilm_shapes):
    chosen = compose("experiment=lsr_stability_test", "model=stability/lsr_r4_t5").model.lsr
    demo = compose("experiment=demo_full", "model=minilm_lsr").model.lsr
    assert (demo.r, demo.num_terms, demo.alpha) == (chosen.r, chosen.num_terms, chosen.alpha) == (4, 5, 64)


def test_smollm2_on_review_texts_compares_lora_with_lsr_at_its_budget_and_under_30_percent():
    """experiment=smollm2_drug_reviews (issue 16, part 4): every linear layer of attention and MLP of
    SmolLM2-135M's architecture (dims 576, 192, 1536), LSR at LoRA r=8's budget and at ≤ 30% of it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lsr_adapt.budget import target_shapes

    # SmolLM2-135M's shape (the GGUF's metadata): 30 layers, hidden 576, 9 heads of 64, 3 key-value heads, MLP 1536
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = sweeper_params("experiment=smollm2_drug_reviews")
    assert params["model"].split(",") == ["smollm2_lora", "smollm2_lsr_t56", "smollm2_lsr"]
    assert len(params["training.seed"].split(",")) >= 3
    sizes = {}
    for name in params["model"].split(","):
        cfg = compose("experiment=smollm2_drug_reviews", f"model={name}")
        assert cfg.data.name == "drug_reviews_lm" and cfg.data.task_type == "causal_lm" and cfg.data.splits.test == "test"
        assert cfg.model.target_modules == "all-linear"
        shapes = target_shapes(model, cfg.model.target_modules, exclude=["lm_head"])
        assert {(s.in_features, s.out_features) for s in shapes} == {(576, 576), (576, 192), (576, 1536), (1536, 576)}
        assert len(shapes) == 30 * 7
        sizes[name] = _adapter_params(cfg, shapes)
    assert sizes["smollm2_lora"] == 2_442_240
    assert abs(sizes["smollm2_lsr_t56"] / sizes["smollm2_lora"] - 1) < 0.005  # the matched budget
    assert sizes["smollm2_lsr"] <= 0.30 * sizes["smollm2_lora"]
