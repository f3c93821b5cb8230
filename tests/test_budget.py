"""Equal-budget matching (src/lsr_adapt/budget.py) against hand-computed sizes and the real layers."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_classifier
from torch import nn

from lsr_adapt.adapters import METHODS, LoRALinear, LSRLinear
from lsr_adapt.budget import (
    LayerShape,
    apply_budget,
    lora_size,
    lsr_size,
    match_budget,
    match_lora,
    match_lsr,
    meta_model,
    real_size,
    target_shapes,
)
from lsr_adapt.budget import main as budget_main
from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.modeling import prepare_model

# RoBERTa-base, query + value in 12 layers: 24 layers of 768 × 768 (= (32·24) × (32·24))
QV = [LayerShape(f"l{i}", 768, 768) for i in range(24)]


def test_sizes_match_hand_computed_values_and_real_layers():
    assert lora_size(QV, 8) == 24 * 8 * (768 + 768) == 294_912
    assert lsr_size(QV, 2, 16) == 24 * 16 * 2 * (32 + 24 + 32 + 24) == 86_016
    # the layer classes hold exactly that many adapter parameters
    assert LoRALinear(nn.Linear(768, 768), r=8).num_adapter_params() == 8 * 1536
    assert LSRLinear(nn.Linear(768, 768), r=2, num_terms=16).num_adapter_params() == 16 * 2 * 112
    # FFN shapes: 3072 = 64·48
    ffn = [LayerShape("up", 768, 3072), LayerShape("down", 3072, 768)]
    assert lsr_size(ffn, 2, 4) == 2 * (4 * 2 * (32 + 24 + 64 + 48))
    assert real_size("lsr", ffn, {"r": 2, "num_terms": 4}) == lsr_size(ffn, 2, 4)
    assert real_size("lora", ffn, {"r": 3}) == lora_size(ffn, 3) == 2 * 3 * (768 + 3072)
    # explicit factors change the per-term size: 768 = 48·16 → 48+16+48+16 = 128
    assert lsr_size(QV, 1, 1, [48, 16], [48, 16]) == 24 * 128
    assert real_size("lsr", QV, {"r": 1, "num_terms": 1, "in_factors": [48, 16], "out_factors": [48, 16]}) == 24 * 128


@pytest.mark.parametrize("method", sorted(n for n, m in METHODS.items() if m.make_layer is not None))
def test_each_method_answers_for_its_own_size(method):
    """Every registered layer class's adapter_params (what budget.py sizes by) is what a built layer holds."""
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    m = METHODS[method]
    cfg = m.make_config({"blocksize": 32} if method == "qlora" else {})  # 32 divides 64 and 96
    for in_f, out_f in ((64, 96), (96, 64)):
        layer = m.make_layer(nn.Linear(in_f, out_f), cfg, "q")
        assert m.adapter_params(in_f, out_f, cfg, "q") == layer.num_adapter_params() > 0, (method, in_f, out_f)


def test_lora_rank_closest_to_budget():
    # one rank step is 24·1536 = 36,864 parameters
    assert match_lora(QV, 86_016).updates == {"r": 2}  # 73,728 (−12,288) beats 110,592 (+24,576)
    assert match_lora(QV, 100_000).updates == {"r": 3}  # 110,592 (+10,592) beats 73,728 (−26,272)
    m = match_lora(QV, 294_912)
    assert (m.updates, m.adapter_params, m.rel_error) == ({"r": 8}, 294_912, 0.0)
    assert match_lora(QV, 5).updates == {"r": 1}  # never below rank 1
    assert match_lora([LayerShape("x", 4, 6)], 10_000).updates == {"r": 4}  # nor above min(in, out)


def test_lsr_terms_closest_to_budget_keeping_r():
    # r = 2 kept: one term is 24·2·112 = 5,376; 294,912 / 5,376 = 54.86 → t = 55 (295,680, +768)
    m = match_lsr(QV, 294_912, {"r": 2, "num_terms": 16, "alpha": 2.0})
    assert m.updates == {"num_terms": 55}
    assert m.adapter_params == 295_680
    assert m.values == {"r": 2, "num_terms": 55, "alpha": 2.0}
    assert match_lsr(QV, 86_016, {"r": 2, "num_terms": 16}).updates == {"num_terms": 16}


def test_lsr_free_rank_and_factors():
    # with factors free the budget is met exactly: 768 = 48·16, so a term of rank 2 is
    # 24·2·(48+16+48+16) = 6,144 and 294,912 / 6,144 = 48 terms; r stays at the configured 2
    m = match_lsr(QV, 294_912, {"r": 2, "num_terms": 16}, free=("r", "num_terms", "factors"))
    assert m.updates == {"r": 2, "num_terms": 48, "in_factors": [48, 16], "out_factors": [48, 16]}
    assert m.adapter_params == 294_912
    # rank alone, t = 16 kept: sizes are r·43,008, so 10,000 is closest to r = 1
    m = match_lsr(QV, 10_000, {"r": 2, "num_terms": 16}, free=("r",))
    assert (m.updates, m.adapter_params) == ({"r": 1}, 43_008)
    # rank and terms: r·t·2,688 closest to 10,000 is r·t = 4 (10,752); the configured r = 2 wins the tie
    m = match_lsr(QV, 10_000, {"r": 2, "num_terms": 16}, free=("r", "num_terms"))
    assert (m.updates, m.adapter_params) == ({"r": 2, "num_terms": 2}, 10_752)


def test_lsr_factors_only_searched_for_a_shared_dimension():
    mixed = QV[:2] + [LayerShape("up", 768, 3072)]
    m = match_lsr(mixed, 50_000, {"r": 2, "num_terms": 16}, free=("num_terms", "factors"))
    # the output dims differ (768 vs 3072): one out_factors list cannot fit both, so it stays balanced
    assert m.updates["out_factors"] is None
    assert real_size("lsr", mixed, m.values) == m.adapter_params


@pytest.mark.parametrize("budget", [1_000, 50_000, 123_457, 1_000_000])
def test_match_is_the_best_over_a_brute_force_search(budget):
    lsr = match_lsr(QV, budget, {"r": 2, "num_terms": 16}, free=("r", "num_terms"))
    brute = min(abs(lsr_size(QV, r, t) - budget) for r in range(1, 25) for t in range(1, 500))
    assert abs(lsr.adapter_params - budget) == brute
    lora = match_lora(QV, budget)
    assert abs(lora.adapter_params - budget) == min(abs(lora_size(QV, r) - budget) for r in range(1, 769))


def test_bad_budget_requests_are_user_errors():
    with pytest.raises(LsrAdaptError, match="positive integer"):
        match_lora(QV, 0)
    with pytest.raises(LsrAdaptError, match="positive integer"):
        match_lora(QV, "lots")
    with pytest.raises(LsrAdaptError, match="lsr_free"):
        match_lsr(QV, 1000, {}, free=("rank",))
    with pytest.raises(LsrAdaptError, match="no size rule"):
        match_budget("full", QV, 1000)
    with pytest.raises(LsrAdaptError, match="exceeds the smallest Kronecker factor"):
        match_lsr([LayerShape("x", 32, 32)], 1000, {"r": 8, "num_terms": 1})  # 32 = 8·4: r ≤ 4


def test_apply_budget_on_a_real_model_gives_the_matched_adapter_size():
    loaded = tiny_classifier("roberta")
    values = apply_budget(loaded, "lsr", {"r": 2, "num_terms": 16, "alpha": 2.0}, ["query", "value"],
                          {"params": 1000, "lsr_free": ["num_terms"]})
    shapes = target_shapes(loaded.model, ["query", "value"])
    expected = match_lsr(shapes, 1000, {"r": 2, "num_terms": 16}).adapter_params
    assert prepare_model(loaded, "lsr", values, ["query", "value"]).counts["adapter_params"] == expected
    assert abs(expected - 1000) <= lsr_size(shapes, 2, 1) / 2  # within half a term of the budget


def test_meta_model_has_real_shapes_without_weights():
    model = meta_model(arch="roberta")
    shapes = target_shapes(model, ["query", "value"], exclude=["classifier"])
    assert {(s.in_features, s.out_features) for s in shapes} == {(768, 768)} and len(shapes) == 24
    assert all(p.device.type == "meta" for p in model.parameters())
    assert torch.device("meta") == next(model.parameters()).device


def test_budget_cli(capsys):
    budget_main(["--arch", "roberta", "--params", "86016"])
    out = capsys.readouterr().out
    assert "natural sizes: lora r=8: 294,912; lsr r=2 t=16: 86,016" in out
    assert "lora r=2: 73,728 adapter params" in out
    assert "lsr num_terms=16: 86,016 adapter params (+0.00% of 86,016)" in out
    with pytest.raises(SystemExit) as exc:
        budget_main(["--arch", "nosuch", "--params", "5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: unknown arch 'nosuch'")
