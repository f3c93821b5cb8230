"""adapters/lsr.py: LSRLinear against dense torch.kron references and its parameter formula (the README's
counts, beside LoRA's), its factorisation, paths and factor checks."""

from __future__ import annotations

import copy

import pytest
import torch
from adapter_cases import _randomize
from tolerances import assert_fp32_close
from torch import nn

from lsr_adapt import LoRALinear, LsrAdaptError, LSRLinear, replace_linear_with_lora, replace_linear_with_lsr
from lsr_adapt.adapters import adapter_layers, factorize
from lsr_adapt.adapters.lsr import PATHS


def lsr_dense_reference(layer: LSRLinear) -> torch.Tensor:
    """ΔW built term by term with torch.kron, straight from the definition."""
    a1, a2, b1, b2 = layer.lsr_A1, layer.lsr_A2, layer.lsr_B1, layer.lsr_B2
    t = layer.num_terms
    if layer.form == "sum":
        delta = sum(torch.kron(b1[i] @ a1[i], b2[i] @ a2[i]) for i in range(t))
    else:
        delta = sum(torch.kron(b1[i], b2[i]) for i in range(t)) @ sum(torch.kron(a1[i], a2[i]) for i in range(t))
    return delta * layer.scaling


def test_parameter_counts_match_formulas():
    base = nn.Linear(768, 768)
    assert LoRALinear(base, r=8).num_adapter_params() == 8 * (768 + 768) == 12_288
    assert LoRALinear(base, r=16).num_adapter_params() == 24_576
    lsr = LSRLinear(base, r=2, num_terms=16)
    assert (lsr.d1, lsr.d2, lsr.k1, lsr.k2) == (32, 24, 32, 24)
    assert lsr.num_adapter_params() == 16 * 2 * (32 + 24 + 32 + 24) == 3_584
    ffn = LSRLinear(nn.Linear(768, 3072), r=2, num_terms=16)
    assert (ffn.k1, ffn.k2) == (64, 48)
    assert ffn.num_adapter_params() == 16 * 2 * (32 + 24 + 64 + 48)


def test_roberta_base_query_value_counts():
    """The numbers in the README: RoBERTa-base q,v over 12 layers."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(vocab_size=100, num_labels=2)  # RoBERTa-base shapes; a small vocab keeps it light
    model = RobertaForSequenceClassification(cfg)
    lora = replace_linear_with_lora(copy.deepcopy(model), ["query", "value"], r=8, alpha=8)
    lsr = replace_linear_with_lsr(model, ["query", "value"], r=2, num_terms=16, alpha=2)
    count = lambda m: sum(layer.num_adapter_params() for layer in adapter_layers(m).values())  # noqa: E731
    assert len(adapter_layers(lora)) == 24
    assert count(lora) == 294_912
    assert count(lsr) == 86_016


def test_factorize_and_bad_factors():
    assert factorize(768) == (32, 24)
    assert factorize(3072) == (64, 48)
    assert factorize(384) == (24, 16)
    with pytest.raises(LsrAdaptError, match=r"cannot factor the input dim 97 of layer enc.q"):
        LSRLinear(nn.Linear(97, 64), name="enc.q")
    with pytest.raises(LsrAdaptError, match=r"factors \[5, 5\] do not multiply to the input dim 64 of layer q"):
        LSRLinear(nn.Linear(64, 64), in_factors=[5, 5], name="q")
    with pytest.raises(LsrAdaptError, match=r"rank r=9 exceeds the smallest Kronecker factor \(8\) of layer q"):
        LSRLinear(nn.Linear(64, 64), r=9, name="q")
    with pytest.raises(LsrAdaptError, match="unknown LSR form 'diag'; valid choices: sum, product"):
        LSRLinear(nn.Linear(64, 64), form="diag")


@pytest.mark.parametrize("form", ["sum", "product"])
@pytest.mark.parametrize("path", [p for p in PATHS if p != "auto"])
def test_lsr_matches_dense_kron_reference(form, path):
    torch.manual_seed(0)
    base = nn.Linear(24, 35)  # in 6×4, out 7×5: unequal factors catch transposed indices
    layer = LSRLinear(base, r=2, num_terms=3, form=form, path=path)
    assert (layer.d1, layer.d2, layer.k1, layer.k2) == (6, 4, 7, 5)
    _randomize(layer)
    ref = lsr_dense_reference(layer)
    # each ΔW entry: t Kronecker terms, each a product of two r-term sums, then the scaling
    kron_terms = layer.num_terms * 2 * layer.r + 1
    assert_fp32_close(layer.delta_weight(), ref, terms=kron_terms)
    x = torch.randn(3, 5, 24)
    assert_fp32_close(layer(x), base(x) + x @ ref.T, terms=24 + kron_terms)  # + the 24 inputs of the matmul


def test_lsr_explicit_factors_and_auto_path():
    layer = LSRLinear(nn.Linear(768, 768), r=2, num_terms=16, in_factors=[48, 16], out_factors=[24, 32])
    assert (layer.d1, layer.d2, layer.k1, layer.k2) == (48, 16, 24, 32)
    assert layer.path == "factored"  # R = 64: 3·64·1536 ≤ 768²
    assert LSRLinear(nn.Linear(768, 768), r=8, num_terms=16).path == "dense"  # R = 1024
    assert LSRLinear(nn.Linear(768, 768), r=8, num_terms=16, form="product").path == "factored"  # R = 64


def test_lsr_factors_every_linear_layer_of_smollm2():
    """SmolLM2-135M's layers (hidden 576, 3 KV heads × 64 = 192, MLP 1536): every one factors, and
    the layer's ΔW equals the dense Kronecker sum it stands for (the reference: torch.kron)."""
    from lsr_adapt.adapters.lsr import factorize

    assert [factorize(n) for n in (576, 192, 1536)] == [(24, 24), (16, 12), (48, 32)]
    torch.manual_seed(0)
    for in_f, out_f in [(576, 576), (576, 192), (576, 1536), (1536, 576)]:
        layer = LSRLinear(nn.Linear(in_f, out_f), r=2, num_terms=3)
        with torch.no_grad():
            for p in layer.adapter_parameters().values():
                p.normal_()
        want = sum(torch.kron(layer.lsr_B1[i] @ layer.lsr_A1[i], layer.lsr_B2[i] @ layer.lsr_A2[i])
                   for i in range(3)) * layer.scaling
        # fp32; each entry sums 3 products of r=2 terms each way: rounding ~1e-6 relative to |ΔW|
        torch.testing.assert_close(layer.delta_weight(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize(("factors", "want"), [
    ([-4, -8], "factors must be two positive integers whose product is 32"),
    ([0, 32], "factors must be two positive integers whose product is 32"),
    ([2.5, 12.8], "factors must be two positive integers whose product is 32"),
    ([4, 8, 1], "factors must be two positive integers whose product is 32"),
    ([4, 4], "do not multiply to the input dim 32 of layer q: 4 x 4 = 16"),
])
def test_lsr_factors_say_what_is_wrong_with_them(factors, want):
    with pytest.raises(LsrAdaptError, match=want.replace("(", r"\(")):
        LSRLinear.check_factors(factors, 32, "q", "input dim")
    assert LSRLinear.check_factors([4, 8], 32, "q", "input dim") == (4, 8)
    assert LSRLinear.check_factors([4.0, 8.0], 32, "q", "input dim") == (4, 8)  # YAML may give floats
