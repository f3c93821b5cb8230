"""LSR: low separation rank adapters, ΔW as a sum of Kronecker products of low-rank factors.

For a layer with in = d₁·d₂ and out = k₁·k₂, with t terms of rank r:

    sum form (default):  ΔW = s · Σᵢ (B₁ᵢ ⊗ B₂ᵢ)(A₁ᵢ ⊗ A₂ᵢ) = s · Σᵢ (B₁ᵢA₁ᵢ) ⊗ (B₂ᵢA₂ᵢ)      rank ≤ t·r²
    product form:        ΔW = s · (Σᵢ B₁ᵢ ⊗ B₂ᵢ)(Σⱼ A₁ⱼ ⊗ A₂ⱼ)                             rank ≤ r²

with A₁ᵢ ∈ R^{r×d₁}, A₂ᵢ ∈ R^{r×d₂}, B₁ᵢ ∈ R^{k₁×r}, B₂ᵢ ∈ R^{k₂×r}:
t·r·(d₁+d₂+k₁+k₂) parameters (3,584 for 768×768 = (32·24)×(32·24) at r=2, t=16; LoRA r=8 has 12,288).

Three exact ways to apply it, chosen per layer by ``path``:

* ``factored``: (B₁⊗B₂)(A₁⊗A₂) is an ordinary low-rank product, so the t Kronecker-expanded
  factors are formed once per step as A (R × in) and Bᵀ (R × out), R = t·r² (sum) or r² (product),
  and applied like a LoRA of rank R: two GEMMs plus two small elementwise kernels.
* ``dense``: ΔW = Σᵢ (B₁ᵢA₁ᵢ)⊗(B₂ᵢA₂ᵢ) formed once per step (t·out·in multiply-adds) and one GEMM
  with W + ΔW; costs an extra out×in weight-gradient GEMM in backward.
* ``activations``: (P⊗Q)·vec(X) = vec(P·X·Qᵀ), batched over the t terms (fewest multiply-adds,
  most kernels). Kept as an independent formulation and for benchmarking.

``auto`` picks factored when 3·R·(in+out) ≤ in·out (its extra FLOPs per token over three
passes against the dense path's extra weight-gradient GEMM), else dense. No dense ΔW outlives a step.

Initialisation and scaling: A₁ ~ N(0, 1/d₁), A₂ ~ N(0, 1/d₂), B₁ ~ N(0, 1), B₂ = 0 (so ΔW = 0 at
the start and B₂ receives the first gradient). With s = α/(r·√t) (sum) or α/(r·t) (product), the
first Adam step changes each entry of ΔW by about α·lr/√in whatever r and t are, so sweeps over r
or t keep one learning rate, and the change of a layer's output per step, α·lr per unit input,
does not depend on the width either. α defaults to 64, the value a sweep of α on real data chose
(docs/results.md holds the sweep, its numbers and its command).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LsrAdaptError
from . import fields
from .base import AdapterLayer, add_low_rank
from .registry import register_method

PATHS = ("auto", "factored", "dense", "activations")
FORMS = ("sum", "product")
MAX_FACTOR_RATIO = 16  # a 2 × 997 split is not a Kronecker structure worth learning


def factor_pairs(n: int) -> list[list[int]]:
    """Every split n = a·b (a ≥ b ≥ 2, a ≤ 16·b) an LSR layer accepts, most balanced first
    (the first is ``factorize(n)``)."""
    pairs = []
    for b in range(math.isqrt(n), 1, -1):
        if n % b == 0 and n // b <= MAX_FACTOR_RATIO * b:
            pairs.append([n // b, b])
    return pairs


def factorize(n: int, layer: str = "", which: str = "dim") -> tuple[int, int]:
    """Split n into (n₁, n₂), n₁ ≥ n₂, as balanced as possible: 768 → (32, 24), 3072 → (64, 48)."""
    for small in range(math.isqrt(n), 1, -1):
        if n % small == 0:
            big = n // small
            if big <= MAX_FACTOR_RATIO * small:
                return big, small
            break
    raise LsrAdaptError(
        f"LSR cannot factor the {which} {n} of layer {layer or '?'} into two factors within a ratio of "
        f"{MAX_FACTOR_RATIO}; give explicit in_factors/out_factors or leave this layer out of target_modules"
    )


@dataclass
class LSRConfig:
    r: int = 2
    num_terms: int = 16
    alpha: float = 64.0
    dropout: float = 0.0
    form: str = "sum"  # sum | product
    path: str = "auto"  # auto | factored | dense | activations
    in_factors: list[int] | None = field(default=None)  # (d₁, d₂); None = balanced split of in
    out_factors: list[int] | None = field(default=None)  # (k₁, k₂); None = balanced split of out

    def __post_init__(self):
        if self.form not in FORMS:
            raise LsrAdaptError(f"unknown LSR form {self.form!r}; valid choices: {', '.join(FORMS)}")
        if self.path not in PATHS:
            raise LsrAdaptError(f"unknown LSR path {self.path!r}; valid choices: {', '.join(PATHS)}")
        fields.positive_ints(self, "r", "num_terms")
        fields.positive_numbers(self, "alpha")
        fields.fraction(self, "dropout")
        fields.factor_pair(self, "in_factors", "input")
        fields.factor_pair(self, "out_factors", "output")


def _kron_rows(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """Rows of f1ᵢ ⊗ f2ᵢ for every term i, stacked: (t, r, m₁), (t, r, m₂) -> (t·r·r, m₁·m₂)."""
    t, r, m1 = f1.shape
    m2 = f2.shape[-1]
    return (f1[:, :, None, :, None] * f2[:, None, :, None, :]).reshape(t * r * r, m1 * m2)


def _kron_expand(a1: torch.Tensor, a2: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A = rows of A₁ᵢ⊗A₂ᵢ (R × in) and Bᵀ = rows of B₁ᵢᵀ⊗B₂ᵢᵀ (R × out) in ``dtype``, one kernel each.

    ``_kron_rows`` of the same factors, but each broadcast product is written straight into a
    contiguous (t, r, r, m₁, m₂) buffer of the compute dtype, so no separate cast runs, and B's
    factors, stored (t, k, r), are read through strides instead of being transposed and copied.
    Under torch.compile the plain expression is traced instead (inductor fuses it anyway).
    """
    t, r, d1 = a1.shape
    d2, k1, k2 = a2.shape[-1], b1.shape[1], b2.shape[1]
    # a1[:, :, None, :, None] etc. as single view ops (a dispatched op per call is a launch-bound cost)
    a1v, a2v = a1.view(t, r, 1, d1, 1), a2.view(t, 1, r, 1, d2)
    b1v, b2v = b1.view(t, k1, r, 1, 1), b2.view(t, 1, 1, k2, r)  # B₁[i,c,p], B₂[i,d,q] as (t, c, p, d, q)
    if torch.compiler.is_compiling():
        a = (a1v * a2v).to(dtype)
        b_t = (b1v * b2v).permute(0, 2, 4, 1, 3).to(dtype)
        return a.reshape(t * r * r, d1 * d2), b_t.reshape(t * r * r, k1 * k2)
    a = torch.empty((t, r, r, d1, d2), dtype=dtype, device=a1.device)
    torch.mul(a1v, a2v, out=a)
    b_t = torch.empty((t, r, r, k1, k2), dtype=dtype, device=b1.device)
    torch.mul(b1v, b2v, out=b_t.permute(0, 3, 1, 4, 2))  # the (t, p, q, c, d) buffer seen as (t, c, p, d, q)
    return a.view(t * r * r, d1 * d2), b_t.view(t * r * r, k1 * k2)


def _mm_scaled(like: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha · m1 @ m2 in one GEMM, no scale kernel: ``addmm`` with beta = 0 ignores its input
    (documented: its values, NaN and inf included, are not read), so any tensor of the result's shape
    (``like``) stands in for it."""
    return torch.addmm(like, m1, m2, beta=0, alpha=alpha)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run this layer's GEMMs in (x's own dtype outside autocast)."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _FactoredSumLSR(torch.autograd.Function):
    """y = x·W₀ᵀ + b + s·(x·Aᵀ)·Bᵀᵀ with A = rows of A₁ᵢ⊗A₂ᵢ, Bᵀ = rows of B₁ᵢᵀ⊗B₂ᵢᵀ (sum form).

    One node for the frozen base layer and the update, so that a training step runs as few kernels
    as possible (at RoBERTa-base sizes a GPU step is launch-bound; docs/benchmarks.md): x is cast to
    the compute dtype once for all three GEMMs; A and Bᵀ are expanded straight into row-major
    buffers of that dtype; the scale s rides in the GEMMs' alpha; the factor gradients are reduced
    in fp32 (the factors' dtype) directly into the parameters' layout, so autograd copies nothing.
    Nothing is kept between steps: the expansions are formed per call, as on the autograd path.
    The base weight and bias must be frozen (the caller checks; otherwise the autograd path runs).
    """

    @staticmethod
    def forward(ctx, x, w, bias, a1, a2, b1, b2, scale, dtype):
        in_f, out_f = w.shape[1], w.shape[0]
        lead = x.shape[:-1]
        xc = x.reshape(-1, in_f).to(dtype)  # the one cast of x
        wc = w.to(dtype)
        a, b_t = _kron_expand(a1, a2, b1, b2, dtype)  # (R, in), (R, out)
        h = torch.mm(xc, a.T)  # (N, R)
        y = torch.addmm(bias.to(dtype), xc, wc.T) if bias is not None else torch.mm(xc, wc.T)
        y.addmm_(h, b_t, alpha=scale)
        ctx.save_for_backward(xc, wc, a, b_t, h, a1, a2, b1, b2)
        ctx.scale, ctx.x_shape, ctx.x_dtype = scale, x.shape, x.dtype
        return y.view(*lead, out_f)

    @staticmethod
    def backward(ctx, g):
        xc, wc, a, b_t, h, a1, a2, b1, b2 = ctx.saved_tensors
        s = ctx.scale
        need_x, _, _, need_a1, need_a2, need_b1, need_b2 = ctx.needs_input_grad[:7]
        t, r, d1 = a1.shape
        d2, k1, k2 = a2.shape[-1], b1.shape[1], b2.shape[1]
        g2 = g.reshape(-1, g.shape[-1]).to(xc.dtype)
        grad_x = grad_a1 = grad_a2 = grad_b1 = grad_b2 = None
        if need_x or need_a1 or need_a2:
            gh = torch.mm(g2, b_t.T)  # (N, R): the gradient of h, unscaled
            if need_x:  # g·W₀ + s·gh·A in two GEMMs, then back to x's dtype
                grad_x = torch.addmm(torch.mm(g2, wc), gh, a, alpha=s).view(ctx.x_shape).to(ctx.x_dtype)
            if need_a1 or need_a2:
                ga = _mm_scaled(a, gh.T, xc, s).view(t, r, r, d1, d2)  # ∂/∂A, rows (term, p, q), cols (a, b)
                # A[i,p,q,a,b] = A₁[i,p,a]·A₂[i,q,b]: each factor's gradient is the other one contracted
                # out; the reductions yield (t, r, d) = the parameters' layout, in their dtype
                if need_a1:
                    grad_a1 = (ga * a2.view(t, 1, r, 1, d2)).sum((2, 4))
                if need_a2:
                    grad_a2 = (ga * a1.view(t, r, 1, d1, 1)).sum((1, 3))
        if need_b1 or need_b2:
            gb = _mm_scaled(b_t, h.T, g2, s).view(t, r, r, k1, k2)  # ∂/∂Bᵀ, rows (term, p, q), cols (c, d)
            # Bᵀ[i,p,q,c,d] = B₁[i,c,p]·B₂[i,d,q]: gb permuted so that the kept dims come first in
            # the parameters' order (t, k, r) and the reduced ones last in the other factor's order
            if need_b1:
                grad_b1 = (gb.permute(0, 3, 1, 4, 2) * b2.view(t, 1, 1, k2, r)).sum((3, 4))
            if need_b2:
                grad_b2 = (gb.permute(0, 4, 2, 3, 1) * b1.view(t, 1, 1, k1, r)).sum((3, 4))
        return grad_x, None, None, grad_a1, grad_a2, grad_b1, grad_b2, None, None


class LSRLinear(AdapterLayer):
    """h = W₀x + ΔW·x with ΔW a sum of t Kronecker products of rank-r factors (see module doc).

    Parameters: lsr_A1 (t, r, d₁), lsr_A2 (t, r, d₂), lsr_B1 (t, k₁, r), lsr_B2 (t, k₂, r);
    t·r·(d₁+d₂+k₁+k₂) in all (3,584 for 768×768 at r=2, t=16): ``adapter_params``. The factors
    are ``in_factors`` / ``out_factors``, else the balanced split (``check_factors``); r may not
    exceed the smallest of them (``max_rank``).
    """

    a_params = ("lsr_A1", "lsr_A2")
    b_params = ("lsr_B1", "lsr_B2")

    config_cls = LSRConfig

    def __init__(self, base_layer: nn.Module, cfg: LSRConfig | None = None, name: str = "", **values):
        """``cfg`` (the method's config dataclass), or its fields as keywords (``r=2, num_terms=16``)."""
        super().__init__(base_layer)
        self.config = cfg = cfg if cfg is not None else self.config_cls(**values)
        r, num_terms, alpha, form, path, dropout = (int(cfg.r), int(cfg.num_terms), float(cfg.alpha), cfg.form,
                                                    cfg.path, cfg.dropout)
        self.d1, self.d2, self.k1, self.k2 = self.kronecker_dims(self.in_features, self.out_features, cfg, name)
        self.r, self.num_terms, self.alpha, self.form = int(r), int(num_terms), float(alpha), form
        t = self.num_terms
        self.scaling = self.alpha / (self.r * (math.sqrt(t) if form == "sum" else t))
        self.eff_rank = t * self.r**2 if form == "sum" else self.r**2
        if path == "auto":
            flops_factored = 3 * self.eff_rank * (self.in_features + self.out_features)
            path = "factored" if flops_factored <= self.in_features * self.out_features else "dense"
        self.path = path

        w = base_layer.weight
        kw = dict(dtype=w.dtype, device=w.device)
        self.lsr_A1 = nn.Parameter(torch.randn(t, self.r, self.d1, **kw) / math.sqrt(self.d1))
        self.lsr_A2 = nn.Parameter(torch.randn(t, self.r, self.d2, **kw) / math.sqrt(self.d2))
        self.lsr_B1 = nn.Parameter(torch.randn(t, self.k1, self.r, **kw))
        self.lsr_B2 = nn.Parameter(torch.zeros(t, self.k2, self.r, **kw))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # -- sizes from the shapes alone (budget matching reads these; the constructor uses them too) ----
    @classmethod
    def adapter_params(cls, in_features: int, out_features: int, cfg: LSRConfig, layer: str = "") -> int:
        """t·r·(d₁ + d₂ + k₁ + k₂), in = d₁·d₂, out = k₁·k₂: one term's A₁, A₂, B₁, B₂ times t."""
        return int(cfg.num_terms) * int(cfg.r) * sum(cls.kronecker_dims(in_features, out_features, cfg, layer))

    @classmethod
    def kronecker_dims(cls, in_features: int, out_features: int, cfg: LSRConfig,
                       layer: str = "") -> tuple[int, int, int, int]:
        """(d₁, d₂, k₁, k₂) of a layer ``in_features`` → ``out_features`` under ``cfg``; an
        ``LsrAdaptError`` when the factors do not fit or r exceeds the smallest of them."""
        layer = layer or f"{out_features}x{in_features}"
        d1, d2 = cls.check_factors(cfg.in_factors, in_features, layer, "input dim")
        k1, k2 = cls.check_factors(cfg.out_factors, out_features, layer, "output dim")
        smallest, r = min(d1, d2, k1, k2), int(cfg.r)
        if r > smallest:
            raise LsrAdaptError(
                f"LSR rank r={r} exceeds the smallest Kronecker factor ({smallest}) of layer {layer} "
                f"(in {in_features} = {d1}×{d2}, out {out_features} = {k1}×{k2})"
            )
        return d1, d2, k1, k2

    @classmethod
    def max_rank(cls, in_features: int, out_features: int, in_factors=None, out_factors=None, layer: str = "") -> int:
        """The largest r a layer ``in_features`` → ``out_features`` takes: its smallest Kronecker factor."""
        layer = layer or f"{out_features}x{in_features}"
        return min(*cls.check_factors(in_factors, in_features, layer, "input dim"),
                   *cls.check_factors(out_factors, out_features, layer, "output dim"))

    @staticmethod
    def check_factors(factors, dim: int, layer: str, which: str) -> tuple[int, int]:
        """``factors`` (two positive integers whose product is ``dim``, floats with integer values
        too) as a pair, or the balanced split of ``dim`` when None; else a one-line ``LsrAdaptError``
        naming the layer, the dimension and an example."""
        if factors is None:
            return factorize(dim, layer, which)
        given = list(factors) if hasattr(factors, "__len__") and not isinstance(factors, str) else [factors]
        try:
            example = f" (e.g. {list(factorize(dim, layer, which))})"
        except LsrAdaptError:
            example = ""
        if len(given) != 2 or not all(fields.is_positive_int(v) for v in given):
            raise LsrAdaptError(f"LSR factors {given} for the {which} {dim} of layer {layer}: factors must be two "
                                f"positive integers whose product is {dim}{example}")
        f = (int(given[0]), int(given[1]))
        if f[0] * f[1] != dim:
            raise LsrAdaptError(f"LSR factors {list(f)} do not multiply to the {which} {dim} of layer {layer}: "
                                f"{f[0]} x {f[1]} = {f[0] * f[1]}{example}")
        return f

    def extra_repr(self) -> str:
        return (f"in={self.in_features}={self.d1}x{self.d2}, out={self.out_features}={self.k1}x{self.k2}, "
                f"r={self.r}, t={self.num_terms}, form={self.form}, path={self.path}, merged={self.merged}")

    # -- the update in its three exact forms ---------------------------------------------------
    def expanded_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A (R × in) and Bᵀ (R × out) with ΔW = s·BᵀᵀA, R = t·r² (sum) or r² (product)."""
        a1, a2, b1t, b2t = self.lsr_A1, self.lsr_A2, self.lsr_B1.mT, self.lsr_B2.mT
        if self.form == "sum":
            return _kron_rows(a1, a2), _kron_rows(b1t, b2t)
        r2 = self.r * self.r
        a = torch.einsum("tpa,tqb->pqab", a1, a2).reshape(r2, self.in_features)  # Σⱼ A₁ⱼ⊗A₂ⱼ
        b_t = torch.einsum("tpc,tqd->pqcd", b1t, b2t).reshape(r2, self.out_features)  # (Σᵢ B₁ᵢ⊗B₂ᵢ)ᵀ
        return a, b_t

    def delta_weight(self) -> torch.Tensor:
        if self.form == "sum":
            p = self.lsr_B1 @ self.lsr_A1  # (t, k₁, d₁)
            q = self.lsr_B2 @ self.lsr_A2  # (t, k₂, d₂)
            # Σᵢ pᵢ ⊗ qᵢ: entry (c·k₂+d, a·d₂+b) = Σᵢ pᵢ[c,a]·qᵢ[d,b]
            delta = torch.einsum("tca,tdb->cdab", p, q).reshape(self.out_features, self.in_features)
            return delta * self.scaling
        a, b_t = self.expanded_factors()
        return (b_t.T @ a) * self.scaling

    def _fused(self) -> bool:
        """The single-node path applies: factored sum form, no active dropout, frozen base layer."""
        base = self.base_layer
        return (self.path == "factored" and self.form == "sum"
                and (isinstance(self.dropout, nn.Identity) or not self.training)
                and not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad))

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused():
            return _FactoredSumLSR.apply(x, self.base_weight(), self.base_layer.bias, self.lsr_A1, self.lsr_A2,
                                         self.lsr_B1, self.lsr_B2, self.scaling, _compute_dtype(x))
        if self.path == "factored":
            a, b_t = self.expanded_factors()
            return add_low_rank(self.base_layer(x), self.dropout(x), a, b_t, self.scaling)
        if self.path == "dense":
            w = self.base_weight()
            delta = self.delta_weight().to(w.dtype)
            if isinstance(self.dropout, nn.Identity) or not self.training:
                return F.linear(x, w + delta, self.base_layer.bias)
            return self.base_layer(x) + F.linear(self.dropout(x), delta)
        return self.base_layer(x) + self._activations_delta(self.dropout(x))

    def _activations_delta(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xm = x.reshape(-1, self.d1, self.d2)  # (N, d₁, d₂): x = vec(X) row-major
        u = torch.einsum("nab,tqb->ntaq", xm, self.lsr_A2.to(x.dtype))  # X A₂ᵀ
        a1, b1, b2 = (p.to(x.dtype) for p in (self.lsr_A1, self.lsr_B1, self.lsr_B2))
        if self.form == "sum":
            z = torch.einsum("tpa,ntaq->ntpq", a1, u)  # Zᵢ = A₁ᵢ X A₂ᵢᵀ, (N, t, r, r)
        else:
            z = torch.einsum("tpa,ntaq->npq", a1, u).unsqueeze(1).expand(-1, self.num_terms, -1, -1)
        v = torch.einsum("ntpq,tdq->ntpd", z, b2)  # Zᵢ B₂ᵢᵀ
        y = torch.einsum("tcp,ntpd->ncd", b1, v)  # Σᵢ B₁ᵢ Zᵢ B₂ᵢᵀ, (N, k₁, k₂)
        return (y * self.scaling).reshape(*lead, self.out_features)


register_method("lsr", make_layer=LSRLinear)  # config: LSRLinear.config_cls
