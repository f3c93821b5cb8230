"""The adapter methods on a tiny RoBERTa classifier, shared by their test modules (test_adapters.py,
test_lora.py, test_dora.py, ...): each method's config and parameter formula, building, perturbing and
running a prepared model, peft twins. Imports bitsandbytes (for ``needs_bnb``), so it is kept out of
helpers.py, which every test module imports."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import SMALL_RUN, tiny_classifier
from torch import nn

from lsr_adapt.adapters import adapter_layers
from lsr_adapt.modeling import prepare_model

try:
    import bitsandbytes  # noqa: F401

    HAVE_BNB = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_BNB = False

needs_bnb = pytest.mark.skipif(not HAVE_BNB, reason="bitsandbytes not installed (pip install 'lsr-adapt[qlora]')")

R = 4  # rank used in the unit tests (tiny model: hidden 32, q and v of 2 layers → 4 wrapped 32×32 layers)

# method → (config, trainable parameters per wrapped (in, out) layer)
METHOD_CASES = {
    "lora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o)),
    "rslora": ({"r": R, "alpha": 8, "use_rslora": True}, lambda i, o: R * (i + o)),
    "dora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o) + o),
    "lora_plus": ({"r": R, "alpha": 8, "lr_ratio": 16}, lambda i, o: R * (i + o)),
    "lsr_plus": ({"r": 2, "num_terms": 3, "lr_ratio": 4}, None),  # counted from the Kronecker factors below
    "lora_fa": ({"r": R, "alpha": 8}, lambda i, o: R * o),
    "dylora": ({"r": R, "alpha": 8}, lambda i, o: R * (i + o)),
    # blocksize 32: on CPU it must divide in_features (32 here), see test_qlora_cpu_blocksize_guard
    "qlora": ({"r": R, "alpha": 8, "blocksize": 32}, lambda i, o: R * (i + o)),
}
ADAPTER_METHODS = [pytest.param(m, marks=needs_bnb) if m == "qlora" else m for m in METHOD_CASES]


def _adaptation_type(method: str) -> str:
    return "lora" if method == "rslora" else method


def _prepared(method: str, config=None):
    """(loaded, untouched copy of the base model, ``PreparedModel``) for a tiny RoBERTa classifier."""
    loaded = tiny_classifier()
    base = copy.deepcopy(loaded.model).eval()
    cfg = METHOD_CASES[method][0] if config is None and method in METHOD_CASES else (config or {})
    return loaded, base, prepare_model(loaded, _adaptation_type(method), dict(cfg))


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Non-zero adapter weights (B starts at zero, which would make most checks vacuous)."""
    g = torch.Generator().manual_seed(seed)
    for layer in adapter_layers(model).values():
        for name, p in layer.adapter_parameters().items():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.2
            p.copy_(p * (1 + noise) if name == "lora_magnitude" else noise)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _peft_twin(loaded, base, use_dora: bool, use_rslora: bool, dropout: float = 0.0):
    """A peft model on the same base weights, with the same (random) adapter weights as ours."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=R, lora_alpha=8, lora_dropout=dropout, use_dora=use_dora,
                                                 use_rslora=use_rslora, target_modules=["query", "value"]))
    _perturb(loaded.model)
    ours = dict(loaded.model.named_parameters())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" not in name:
                continue
            key = name.removeprefix("base_model.model.").replace(".default.weight", "").replace(".default", "")
            p.copy_(ours[key.replace("lora_magnitude_vector", "lora_magnitude")])
    return peft_model


def _randomize(layer: nn.Module, seed: int = 0) -> None:
    """Give every adapter parameter random values (ΔW = 0 at init would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


FAST = (*SMALL_RUN, "training.logging_steps=1")
