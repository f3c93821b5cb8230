"""adapters/lora.py: LoRALinear against HF peft on the same weights, and rsLoRA's α/√r scaling
(use_rslora), on LoRA itself and on the methods built on LoRALinear."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from adapter_cases import METHOD_CASES, R, _logits, _peft_twin, _prepared, needs_bnb
from helpers import tiny_batch, tiny_classifier
from tolerances import assert_fp32_close, forward_terms

from lsr_adapt import LoRALinear, replace_linear_with_lora
from lsr_adapt.adapters import adapter_layers
from lsr_adapt.adapters.dylora import DyLoRALinear


def test_lora_matches_peft_on_same_weights():
    peft = pytest.importorskip("peft")
    loaded = tiny_classifier()
    model = loaded.model.eval()
    reference = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False))
    ours = replace_linear_with_lora(model, ["query", "value"], r=4, alpha=8)
    peft_state = reference.state_dict()
    for name, layer in adapter_layers(ours).items():
        prefix = f"base_model.model.{name}"
        with torch.no_grad():
            layer.lora_A.copy_(peft_state[f"{prefix}.lora_A.default.weight"])
            layer.lora_B.copy_(peft_state[f"{prefix}.lora_B.default.weight"])
        assert layer.lora_B.abs().sum() > 0  # init_lora_weights=False: a non-trivial ΔW
    batch = tiny_batch(loaded.tokenizer)
    with torch.no_grad():
        # peft's LoRA forward: the same sums in its own order along the whole network
        assert_fp32_close(ours(**batch).logits, reference.eval()(**batch).logits, terms=forward_terms(model, batch))


def test_rslora_equals_peft():
    loaded, base, _ = _prepared("rslora")
    peft_model = _peft_twin(loaded, base, use_dora=False, use_rslora=True).eval()
    layer = next(iter(adapter_layers(loaded.model).values()))
    assert layer.scaling == pytest.approx(8 / math.sqrt(R))
    batch = tiny_batch(loaded.tokenizer)
    assert_fp32_close(_logits(loaded.model.eval(), batch), _logits(peft_model, batch),  # peft's order of sums
                      terms=forward_terms(loaded.model, batch))


@pytest.mark.parametrize("method", ["dora", "lora_plus", "lora_fa", "dylora", pytest.param("qlora", marks=needs_bnb)])
def test_methods_built_on_lora_honour_rslora(method):
    cfg = {**METHOD_CASES[method][0], "use_rslora": True}
    loaded, _, _ = _prepared(method, cfg)
    for layer in adapter_layers(loaded.model).values():
        assert isinstance(layer, LoRALinear) and layer.scaling == pytest.approx(8 / math.sqrt(R))
        if isinstance(layer, DyLoRALinear):
            assert layer.rank_scaling(2) == pytest.approx(8 / math.sqrt(2))
