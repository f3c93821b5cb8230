"""LoRA-FA (Zhang et al. 2023, arXiv:2308.03303): LoRA with A frozen at its random init.

    h = W₀x + s·B·(A·x),   A ∈ R^{r×in} frozen (kaiming-uniform, as LoRA), B ∈ R^{out×r} zeros, trained

The point is activation memory. Autograd saves, per matmul, only the inputs its needed gradients
read: with A trainable (LoRA) the layer keeps its input x (N × in) for ∂L/∂A = (∂L/∂(Ax))ᵀ·x; with A
frozen it keeps only the r-dim projection A·x (N × r) for ∂L/∂B, and the frozen W₀ and A themselves
for ∂L/∂x. ``tests/test_lora_fa.py`` checks this with ``torch.autograd.graph.saved_tensors_hooks``;
``benchmarks/step_time.py`` shows it in peak memory. (Dropout > 0 would save its mask, N × in
bytes, and give part of the saving back; the default is no dropout.)

A stays a parameter named ``lora_A`` (listed in ``frozen_params``), so it is saved with the adapter
and exports keep LoRA's layout. Trainable parameters: r·out (6,144 for 768 × 768 at r = 8); the
adapter holds r·(in + out).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .lora import LoRAConfig, LoRALinear
from .registry import register_method


@dataclass
class LoRAFAConfig(LoRAConfig):
    """LoRA's options (r, alpha, dropout, use_rslora); A is frozen whatever they are."""


class LoRAFALinear(LoRALinear):
    """``LoRALinear`` whose ``lora_A`` never trains (``frozen_params``).

    Adapter parameters: LoRA's r·(in + out) (``adapter_params``), of which r·out train.
    """

    frozen_params = ("lora_A",)
    config_cls = LoRAFAConfig

    def __init__(self, base_layer: nn.Module, cfg: LoRAFAConfig | None = None, name: str = "", **values):
        super().__init__(base_layer, cfg, name, **values)
        self.lora_A.requires_grad_(False)


register_method("lora_fa", make_layer=LoRAFALinear)  # config: LoRAFALinear.config_cls
