"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv:2402.09353).

The adapted weight is a learned magnitude times a direction:

    W' = m ⊙ (W₀ + s·B·A) / ‖W₀ + s·B·A‖_row        (one norm per output row, i.e. per column of
                                                      the paper's in × out layout)

m ∈ R^out starts at ‖W₀‖_row, so W' = W₀ at the start (B = 0). As in the paper's efficient variant
(section 4.3) and HF peft, the norm is treated as a constant (detached): it follows ΔW but gets no
gradient. The forward never forms a dense ΔW per token:

    y = (m / n) ⊙ (W₀x + s·B·A·x) + b,    n = ‖W₀ + s·B·A‖_row (no grad, once per step)

so a step costs LoRA's GEMMs plus an out × in norm and one elementwise scale. With dropout active
in training, the formula is peft's (the base term sees the undropped x, the correction the dropped x):

    y = W₀x + b + (m/n − 1) ⊙ W₀·drop(x) + (m/n) ⊙ s·B·A·drop(x)

Trainable parameters: r·(in + out) + out  (13,056 for 768 × 768 at r = 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import add_low_rank
from .lora import LoRAConfig, LoRALinear
from .registry import register_method


@dataclass
class DoRAConfig(LoRAConfig):
    """LoRA's options (r, alpha, dropout, use_rslora); DoRA adds only the magnitude vector."""


class DoRALinear(LoRALinear):
    """LoRA (``lora_A`` r × in, ``lora_B`` out × r) plus ``lora_magnitude`` (out,); see the module doc."""

    config_cls = DoRAConfig

    def __init__(self, base_layer: nn.Module, cfg: DoRAConfig | None = None, name: str = "", **values):
        super().__init__(base_layer, cfg, name, **values)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(self.base_weight().float(), dim=1)
        self.lora_magnitude = nn.Parameter(norm.to(self.lora_A.dtype))

    def weight_norm(self) -> torch.Tensor:
        """‖W₀ + s·B·A‖ per output row, in fp32 and detached (the paper's efficient variant)."""
        with torch.no_grad():
            w = self.base_weight().float()
            adapted = torch.addmm(w, self.lora_B.float(), self.lora_A.float(), alpha=self.scaling)
            return torch.linalg.vector_norm(adapted, dim=1)

    def magnitude_scale(self) -> torch.Tensor:
        """m / ‖W₀ + s·B·A‖_row, shape (out,); differentiable in m only."""
        return self.lora_magnitude / self.weight_norm().to(self.lora_magnitude.dtype)

    def delta_weight(self) -> torch.Tensor:
        """W' − W₀ = (m/n) ⊙ (W₀ + s·B·A) − W₀ (dense; for merging and export only)."""
        w = self.base_weight().to(self.lora_A.dtype)
        adapted = w + super().delta_weight()
        return self.magnitude_scale()[:, None] * adapted - w

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base_weight()
        bias = self.base_layer.bias
        scale = self.magnitude_scale()
        if isinstance(self.dropout, nn.Identity) or not self.training:
            y = add_low_rank(F.linear(x, w), x, self.lora_A, self.lora_B.T, self.scaling)
            scale = scale.to(y.dtype)
            # the bias rides in the scaling kernel (addcmul) instead of the base GEMM
            return torch.addcmul(bias.to(y.dtype), y, scale) if bias is not None else y * scale
        xd = self.dropout(x)
        base = self.base_layer(x)
        wx = F.linear(xd, w)
        z = add_low_rank(wx, xd, self.lora_A, self.lora_B.T, self.scaling)  # W₀x' + s·BAx' (out of place)
        return base + scale.to(base.dtype) * z - wx


register_method("dora", DoRAConfig, DoRALinear, description="m ⊙ (W + s·BA) / ‖W + s·BA‖_row")
