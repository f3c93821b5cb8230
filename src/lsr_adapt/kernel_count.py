"""What one training step of a layer dispatches: aten ops, and of those the kernels.

Counted with a ``TorchDispatchMode`` during forward + backward of a layer on 8 × 64 tokens under CPU
bf16 autocast (the stand-in for a CUDA bf16 step): exact and repeatable, it counts, it does not time.
At RoBERTa-base sizes a GPU step is launch-bound, so kernels are the cost (docs/benchmarks.md).
Shared by ``tests/test_kernel_budget.py`` (the budgets) and ``benchmarks/kernel_count.py`` (the table).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that launch no kernel: views and aliases only rewrite a tensor's sizes and strides ...
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose", "permute", "expand", "unsqueeze",
    "squeeze", "as_strided", "alias", "detach", "slice", "select", "narrow", "diagonal", "unfold", "split",
    "unbind", "view_as", "lift_fresh",
})
# ... and bare allocations (the caching allocator hands out memory without a launch). ``ones_like``
# is the backward's seed gradient (a fill), the same one in every variant; counting it as an
# allocation keeps the numbers those of issue 22 (frozen Linear 7 kernels, LoRA α=16 20).
ALLOC_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "ones_like", "zeros_like",
})


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def count_step(layer: nn.Module, tokens: tuple[int, int] = (8, 64)) -> dict:
    """``{"ops", "kernels", "per_op"}`` of forward + backward of ``layer`` under CPU bf16 autocast, on
    an input that requires a gradient (as it does for every adapted layer but the first)."""
    x = torch.randn(*tokens, layer.in_features, requires_grad=True)
    with _Recorder() as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.sum().backward()
    per_op = Counter(rec.ops)
    kernels = sum(n for op, n in per_op.items() if op not in VIEW_OPS and op not in ALLOC_OPS)
    return {"ops": len(rec.ops), "kernels": kernels, "per_op": Counter(dict(sorted(per_op.items()))), "input": x}
