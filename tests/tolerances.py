"""Float tolerances for the tests, derived from how the compared values are computed (issue 14).

Two float32 computations of the same exact quantity that differ only in the order of their
operations (another kernel or blocking, a masked vs a sliced matmul, a merged vs an unmerged
weight, our code vs a reference library, a new torch release) are both within n·u·Σ|terms| of the
exact sum of n terms (u = eps/2, Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1),
so they differ by at most about n·eps·Σ|terms|. Along a network each sum on the path adds its own
error, so n is the number of terms accumulated along the path (``forward_terms``), and the scale is
the magnitude of the compared values: ``max |expected|``. For random data Σ|terms| exceeds a sum's
magnitude by ~√n while rounding errors grow like √n·eps, not n·eps, so n·eps·max|expected| holds
with a wide margin for any summation order, yet stays far below what a real bug (a wrong mask,
a transposed factor, a missed scaling) changes: such bugs move values by a fraction of themselves.

Use ``assert_fp32_close(actual, expected, terms=...)`` with a comment naming what ``terms`` counts.
Bit-identical comparisons (``rtol=0, atol=0``) stay exact where the same kernels run on the same
values in the same order (the same module twice, a state dict copied, a disabled adapter).
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7: float32's relative rounding step


def fp32_atol(expected: torch.Tensor, terms: int) -> float:
    """terms · eps32 · max|expected|: the reorder bound above for float32 sums of ``terms`` terms."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return terms * EPS32 * scale


def assert_fp32_close(actual: torch.Tensor, expected: torch.Tensor, *, terms: int, msg=None) -> None:
    """``actual`` equals ``expected`` up to float32 summation order over ``terms`` accumulated terms."""
    assert terms >= 1
    torch.testing.assert_close(actual, expected, rtol=0, atol=fp32_atol(expected, terms), msg=msg)


def forward_terms(model, batch) -> int:
    """Terms accumulated along a transformer encoder's forward path for ``batch``, from its config.

    Per layer: the q/k/v projections (hidden), the scores (head dim), softmax's normaliser and the
    attention-weighted sum (sequence length each), the attention output (hidden), two LayerNorms
    (hidden each: mean and variance), the FFN up (hidden) and down (intermediate) projections; plus
    the embedding LayerNorm and a two-matmul classification head (hidden each).
    """
    cfg = model.config
    hidden = int(cfg.hidden_size)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    inter = int(getattr(cfg, "intermediate_size", 4 * hidden) or 4 * hidden)
    seq = int(batch["input_ids"].shape[-1])
    per_layer = hidden + hidden // heads + 2 * seq + hidden + 2 * hidden + hidden + inter
    return int(cfg.num_hidden_layers) * per_layer + hidden + 2 * hidden
