"""The common base of every adapter layer.

An adapter wraps one frozen base layer (``nn.Linear``, or transformers' ``Conv1D`` whose weight
is stored transposed) and adds a learned update ΔW (out × in). Subclasses provide

* ``delta_weight()``: the dense, scaled ΔW (used for merging, exports and tests), and
* ``adapted_forward(x)``: the layer output with the update applied, computed the cheapest way.

and, where the size follows from the shapes alone, ``adapter_params(in, out, cfg)``: the formula
its docstring states, which ``num_adapter_params()`` of a built layer equals (budget matching sizes
adapters by it without building any).

The base owns merge/unmerge and enable/disable, so a new method never reimplements them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LsrAdaptError

try:  # GPT-2 style models use Conv1D (y = x @ W + b with W stored in × out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()

SUPPORTED_BASE_LAYERS = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


def base_layer_dims(layer: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a supported base layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, False
    if Conv1D and isinstance(layer, Conv1D):
        in_f, out_f = layer.weight.shape
        return in_f, out_f, True
    raise TypeError(f"cannot adapt a {type(layer).__name__}; supported: nn.Linear, transformers Conv1D")


def add_low_rank(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor, scale: float) -> torch.Tensor:
    """y + scale · (x Aᵀ) B for a rank-R update written as A (R × in) and Bᵀ (R × out).

    The scale and the residual add ride inside one ``addmm`` instead of two extra elementwise
    kernels: at RoBERTa-base sizes a training step is launch-bound, so kernel count is the cost.
    """
    h = F.linear(x, a.to(x.dtype))  # (..., in) -> (..., R)
    out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), b_t.to(h.dtype), alpha=scale)
    return out.view(y.shape)


class AdapterLayer(nn.Module):
    """Frozen base layer + trainable update. ``forward`` is the base alone when merged or disabled."""

    #: names of parameters that are the adapter's "input side" (A) and "output side" (B);
    #: optimizer recipes such as LoRA+ and LoRA-FA act on these roles, not on method names.
    a_params: tuple[str, ...] = ()
    b_params: tuple[str, ...] = ()
    #: adapter parameters that are part of the adapter's state but never train (LoRA-FA's A):
    #: saved with the adapter, left frozen by ``modeling.mark_trainable``.
    frozen_params: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.in_features, self.out_features, self.fan_in_fan_out = base_layer_dims(base_layer)
        self.base_layer = base_layer
        self.merged = False
        self.adapter_enabled = True
        self._merge_on_enable = False  # merge() asked while disabled, or a merged layer disabled
        self._unmerged_weight: torch.Tensor | None = None

    # -- to implement ------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """Dense, scaled ΔW, shape (out_features, in_features)."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the base layer with the update applied; default forms ΔW densely."""
        w = self.base_weight()
        return F.linear(x, w + self.delta_weight().to(w.dtype), self.base_layer.bias)

    @classmethod
    def adapter_params(cls, in_features: int, out_features: int, cfg, layer: str = "") -> int:
        """Adapter parameters of a layer ``in_features`` → ``out_features`` under ``cfg``, without
        building it (``layer`` names it in errors); optional, a method without it is sized by hand."""
        raise NotImplementedError(f"{cls.__name__} has no adapter_params formula")

    # -- shared machinery --------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The frozen base weight as (out, in), whatever the base layer's storage order."""
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.adapter_enabled:
            return self.base_layer(x)
        return self.adapted_forward(x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, merged={self.merged}"

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the base weight; inference then costs exactly the base layer.

        The original weight tensor is kept aside (not in the state dict) so ``unmerge`` restores
        it bit for bit; ``merge_and_unload`` drops it for export.
        """
        if self.merged:
            return
        if not self.adapter_enabled:  # a disabled layer stays the base layer; merged once enabled
            self._merge_on_enable = True
            return
        weight = self.base_layer.weight
        delta = self.delta_weight().to(weight.dtype)
        if not torch.isfinite(delta).all():  # NaN/inf would poison the base weight for good
            raise LsrAdaptError(f"refusing to merge a non-finite ΔW (NaN/inf) into a "
                                f"{self.out_features}×{self.in_features} layer; the adapter weights are not finite")
        self._unmerged_weight = weight.data
        weight.data = weight.data + (delta.T if self.fan_in_fan_out else delta)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        self._merge_on_enable = False
        if not self.merged:
            return
        self.base_layer.weight.data = self._unmerged_weight
        self._unmerged_weight = None
        self.merged = False

    def enable_adapter(self, enabled: bool = True) -> None:
        """Disabled, the layer is the base layer alone, merged or not: a merged ΔW is taken out of the
        weight (exactly, ``unmerge``) and folded back in when the adapter is enabled again."""
        if not enabled and self.merged:
            self.unmerge()
            self._merge_on_enable = True
        self.adapter_enabled = enabled
        if enabled and self._merge_on_enable:
            self._merge_on_enable = False
            self.merge()

    def disable_adapter(self) -> None:
        self.enable_adapter(False)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters that belong to the adapter (not to the wrapped base layer)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}

    def num_adapter_params(self) -> int:
        return sum(p.numel() for p in self.adapter_parameters().values())
