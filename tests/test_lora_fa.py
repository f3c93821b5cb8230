"""adapters/lora_fa.py: LoRA-FA saves only the r-dim projection for backward (autograd's saved-tensor hooks),
and its A never moves under an optimizer."""

from __future__ import annotations

import copy

import torch
from adapter_cases import R, _prepared
from helpers import tiny_batch
from torch import nn

from lsr_adapt import LoRALinear
from lsr_adapt.adapters import adapter_layers
from lsr_adapt.adapters.lora_fa import LoRAFALinear


def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> tuple[int, bool]:
    """Bytes autograd saves for one forward of ``layer``, and whether one of them is x itself."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    params = {p.data_ptr() for p in layer.parameters()}
    activations = [t for t in saved if t.data_ptr() not in params]
    holds_x = any(t.data_ptr() == x.data_ptr() for t in activations)
    return sum(t.numel() * t.element_size() for t in activations), holds_x


def test_lora_fa_saves_only_the_projection():
    torch.manual_seed(0)
    base = nn.Linear(256, 256).requires_grad_(False)  # frozen, as in a prepared model
    x = torch.randn(8, 16, 256, requires_grad=True)
    lora_bytes, lora_holds_x = _saved_bytes(LoRALinear(copy.deepcopy(base), r=R), x)
    fa_bytes, fa_holds_x = _saved_bytes(LoRAFALinear(copy.deepcopy(base), r=R), x)
    assert lora_holds_x and not fa_holds_x
    assert fa_bytes == 8 * 16 * R * 4  # A·x only: N × r fp32
    assert lora_bytes >= 8 * 16 * 256 * 4 + fa_bytes


def test_lora_fa_a_unchanged_after_optimizer_steps():
    loaded, _, _ = _prepared("lora_fa")
    model = loaded.model.train()
    layers = adapter_layers(model)
    a_before = {n: layer.lora_A.detach().clone() for n, layer in layers.items()}
    b_before = {n: layer.lora_B.detach().clone() for n, layer in layers.items()}
    # AdamW over every parameter (frozen ones included) with weight decay: A must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = tiny_batch(loaded.tokenizer)
    for _ in range(3):
        opt.zero_grad()
        model(**batch, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
    for n, layer in layers.items():
        assert torch.equal(layer.lora_A.detach(), a_before[n])
        assert not torch.equal(layer.lora_B.detach(), b_before[n])
