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


class _MagnitudeEpilogue(torch.autograd.Function):
    """(m / n) ⊙ y + b with n detached, in as few kernels as autograd's formulas allow.

    Autograd's ``addcmul(b, y, (m / n).to(dtype))`` costs, beside the forward's three kernels, two
    multiplies by ``value`` = 1 (one of them full-size), a cast and a division in backward; here the
    scale is divided straight into the compute dtype, and the backward is the two products it needs
    (∂y = g ⊙ m/n; ∂m = Σ_rows g ⊙ y / n, reduced in fp32). The bias is frozen (the caller checks).
    """

    @staticmethod
    def forward(ctx, y, m, n, bias):
        if torch.compiler.is_compiling():
            scale = (m / n).to(y.dtype)
        else:  # one kernel: the division writes the compute dtype (autograd cannot see out=, we can)
            scale = torch.empty(m.shape, dtype=y.dtype, device=m.device)
            torch.div(m, n, out=scale)
        out = torch.addcmul(bias.to(y.dtype), y, scale) if bias is not None else y * scale
        ctx.save_for_backward(y, scale, n)
        ctx.m_dtype = m.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        y, scale, n = ctx.saved_tensors
        grad_y = g * scale if ctx.needs_input_grad[0] else None
        grad_m = None
        if ctx.needs_input_grad[1]:
            rows = tuple(range(g.dim() - 1))
            grad_m = (g * y).sum(rows, dtype=n.dtype).div_(n).to(ctx.m_dtype)
        return grad_y, grad_m, None, None


class DoRALinear(LoRALinear):
    """LoRA (``lora_A`` r × in, ``lora_B`` out × r) plus ``lora_magnitude`` (out,); see the module doc.

    Trainable parameters: r·(in + out) + out (13,056 for 768 × 768 at r = 8): ``adapter_params``.
    """

    config_cls = DoRAConfig

    @classmethod
    def adapter_params(cls, in_features: int, out_features: int, cfg: DoRAConfig, layer: str = "") -> int:
        """LoRA's r·(in + out) and the magnitude vector's out."""
        return super().adapter_params(in_features, out_features, cfg, layer) + out_features

    def __init__(self, base_layer: nn.Module, cfg: DoRAConfig | None = None, name: str = "", **values):
        super().__init__(base_layer, cfg, name, **values)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(self.base_weight().float(), dim=1)
        self.lora_magnitude = nn.Parameter(norm.to(self.lora_A.dtype))

    def weight_norm(self) -> torch.Tensor:
        """‖W₀ + s·B·A‖ per output row, in fp32 and detached (the paper's efficient variant).

        Outside autocast: under it the ``addmm`` would run in bf16 (up to ~5e-3 relative error in
        the norm) and cost four casts; in fp32 it costs none for fp32 weights.
        """
        w = self.base_weight()
        with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
            w = w.float()
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
        if isinstance(self.dropout, nn.Identity) or not self.training:
            y = add_low_rank(F.linear(x, w), x, self.lora_A, self.lora_B.T, self.scaling)
            if bias is not None and bias.requires_grad:  # a trained bias: let autograd see it
                return torch.addcmul(bias.to(y.dtype), y, self.magnitude_scale().to(y.dtype))
            return _MagnitudeEpilogue.apply(y, self.lora_magnitude, self.weight_norm(), bias)
        scale = self.magnitude_scale()
        xd = self.dropout(x)
        base = self.base_layer(x)
        wx = F.linear(xd, w)
        z = add_low_rank(wx, xd, self.lora_A, self.lora_B.T, self.scaling)  # W₀x' + s·BAx' (out of place)
        return base + scale.to(base.dtype) * z - wx


register_method("dora", make_layer=DoRALinear)  # config: DoRALinear.config_cls
