"""Equal parameter budgets: the LoRA rank and LSR (r, t, factors) whose adapters come closest to N.

Adapter sizes over the targeted layers (the task head is not counted: it is the same for every
method) are the layer classes' own: each method's ``adapter_params(in, out, cfg)`` (the registry's
``AdapterMethod.adapter_params``; the formula is in the layer class's docstring), and LSR's
``LSRLinear.max_rank`` / ``factor_pairs`` say which r and factors a layer takes. This module only
searches: a size is assumed to grow in proportion to LoRA's r and to LSR's r and num_terms
(the candidates bracket the budget from the size of one unit), and every pick is checked against
real layers built on the meta device.

RoBERTa-base, query and value of 12 layers (24 layers of 768×768 = (32·24)×(32·24)):
LoRA r=8 → 294,912; LSR r=2, t=16 → 86,016.

The match minimises |size − budget|; ties go to the configured values (LSR r closest to the
configured r, balanced factors, fewer terms; the smaller LoRA rank). LSR changes only the fields
named in ``budget.lsr_free`` (default: ``num_terms``, keeping the configured r).

In a run: ``budget.params=N`` (root config) rewrites the method's size fields before the adapter is
applied; the chosen values are in ``results.json``'s ``method_config``. Standalone:
``python -m lsr_adapt.budget --arch roberta --params 86016``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import LSRLinear, get_method, resolve_target_modules
from .adapters.base import base_layer_dims
from .adapters.lsr import factor_pairs
from .cli import exit_on_user_error
from .errors import LsrAdaptError, first_line
from .modeling import head_parameter_names

log = logging.getLogger(__name__)

LSR_FREE_FIELDS = ("r", "num_terms", "factors")
BUDGET_METHODS = ("lora", "lsr")


@dataclass(frozen=True)
class LayerShape:
    name: str
    in_features: int
    out_features: int


@dataclass
class Match:
    """A picked configuration: the fields to set in the method config and the resulting size."""

    method: str
    updates: dict
    adapter_params: int
    budget: int
    candidates: int = 0
    values: dict = field(default_factory=dict)  # the full method config after the updates

    @property
    def rel_error(self) -> float:
        return (self.adapter_params - self.budget) / self.budget

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.updates.items())
        return f"{self.method} {fields}: {self.adapter_params:,} adapter params ({100 * self.rel_error:+.2f}% of {self.budget:,})"


def target_shapes(model: nn.Module, target_modules=None, exclude=()) -> list[LayerShape]:
    """(in, out) of every layer ``target_modules`` selects, as ``apply_adapter`` would select them."""
    shapes = []
    for name in resolve_target_modules(model, target_modules, exclude):
        in_f, out_f, _ = base_layer_dims(model.get_submodule(name))
        shapes.append(LayerShape(name, in_f, out_f))
    return shapes


# -- sizes -----------------------------------------------------------------------------------------
def method_size(method: str, shapes: list[LayerShape], values: dict) -> int:
    """Σ over ``shapes`` of the method's ``adapter_params`` for the config ``values`` (no layer built)."""
    m = get_method(method)
    cfg = m.make_config(values)
    first = {}  # one call per distinct (in, out), naming the first layer of that shape in errors
    for s in shapes:
        first.setdefault((s.in_features, s.out_features), s.name)
    counts = Counter((s.in_features, s.out_features) for s in shapes)
    return sum(n * m.adapter_params(in_f, out_f, cfg, first[in_f, out_f]) for (in_f, out_f), n in counts.items())


def lora_size(shapes: list[LayerShape], r: int) -> int:
    """LoRA's size at rank r (``LoRALinear.adapter_params``)."""
    return method_size("lora", shapes, {"r": r})


def lsr_size(shapes: list[LayerShape], r: int, num_terms: int, in_factors=None, out_factors=None) -> int:
    """LSR's size at (r, num_terms, factors) (``LSRLinear.adapter_params``)."""
    return method_size("lsr", shapes, {"r": r, "num_terms": num_terms, "in_factors": in_factors,
                                       "out_factors": out_factors})


def lsr_max_rank(shapes: list[LayerShape], in_factors=None, out_factors=None) -> int:
    """The largest LSR r every layer takes (``LSRLinear.max_rank``)."""
    return min(LSRLinear.max_rank(s.in_features, s.out_features, in_factors, out_factors, s.name) for s in shapes)


def real_size(method: str, shapes: list[LayerShape], values: dict) -> int:
    """The adapter parameters of the real layer classes for ``values``, built on the meta device."""
    m = get_method(method)
    cfg = m.make_config(values)
    total, per_shape = 0, {}
    for s in shapes:
        key = (s.in_features, s.out_features)
        if key not in per_shape:
            base = nn.Linear(s.in_features, s.out_features, device="meta")
            per_shape[key] = m.make_layer(base, cfg, s.name).num_adapter_params()
        total += per_shape[key]
    return total


# -- matching --------------------------------------------------------------------------------------
def _check_budget(shapes, budget) -> int:
    if not shapes:
        raise LsrAdaptError("budget matching needs at least one target layer")
    try:
        budget = int(budget)
    except (TypeError, ValueError):
        raise LsrAdaptError(f"budget.params must be a positive integer, got {budget!r}") from None
    if budget < 1:
        raise LsrAdaptError(f"budget.params must be a positive integer, got {budget}")
    return budget


def _near(budget: int, per_unit: int) -> list[int]:
    """The integers n ≥ 1 whose n·per_unit bracket the budget."""
    lo = max(1, budget // per_unit)
    return [lo, lo + 1]


def match_lora(shapes: list[LayerShape], budget: int, base: dict | None = None) -> Match:
    """The LoRA rank r (1 ≤ r ≤ the smallest layer dimension) whose size is closest to ``budget``."""
    budget = _check_budget(shapes, budget)
    r_max = min(min(s.in_features, s.out_features) for s in shapes)  # a larger rank adds nothing
    candidates = sorted({min(r, r_max) for r in _near(budget, lora_size(shapes, 1))})
    sizes = {r: lora_size(shapes, r) for r in candidates}
    r = min(candidates, key=lambda r: (abs(sizes[r] - budget), r))
    values = {**(base or {}), "r": r}
    return Match("lora", {"r": r}, sizes[r], budget, len(candidates), values)


def _factor_choices(shapes, configured, dim: str, free: bool) -> list:
    """Configured factors first; with ``free`` also every explicit split shared by all target layers."""
    choices = [configured]
    dims = {getattr(s, dim) for s in shapes}
    if free and configured is None and len(dims) == 1:
        # one in_factors/out_factors list applies to every layer, so it only exists for a common dim;
        # null stands for the balanced split, which is the first pair
        choices += factor_pairs(dims.pop())[1:]
    return choices


def match_lsr(shapes: list[LayerShape], budget: int, base: dict | None = None,
              free=("num_terms",)) -> Match:
    """The LSR (r, num_terms, in/out factors) closest to ``budget``, changing only ``free`` fields."""
    budget = _check_budget(shapes, budget)
    base = dict(base or {})
    free = set(free)
    bad = free - set(LSR_FREE_FIELDS)
    if bad or not free:
        raise LsrAdaptError(f"budget.lsr_free must name some of {', '.join(LSR_FREE_FIELDS)}; got {sorted(free) or '[]'}")
    r0, t0 = int(base.get("r", 2)), int(base.get("num_terms", 16))
    best, n = None, 0
    for in_f in _factor_choices(shapes, base.get("in_factors"), "in_features", "factors" in free):
        for out_f in _factor_choices(shapes, base.get("out_factors"), "out_features", "factors" in free):
            r_max = lsr_max_rank(shapes, in_f, out_f)
            unit = lsr_size(shapes, 1, 1, in_f, out_f)  # the size of t = r = 1
            rs = range(1, r_max + 1) if "r" in free else [r0]
            for r in rs:
                if r > r_max:
                    continue
                ts = _near(budget, lsr_size(shapes, r, 1, in_f, out_f)) if "num_terms" in free else [t0]
                for t in ts:
                    size = lsr_size(shapes, r, t, in_f, out_f)
                    # the unit's penalty prefers the balanced split (the layer's default) on ties
                    key = (abs(size - budget), abs(r - r0), unit, t)
                    n += 1
                    if best is None or key < best[0]:
                        best = (key, r, t, in_f, out_f, size)
    if best is None:
        raise LsrAdaptError(f"no valid LSR configuration: r={r0} exceeds the smallest Kronecker factor of the "
                            f"target layers; add r to budget.lsr_free or lower model.lsr.r")
    _, r, t, in_f, out_f, size = best
    updates = {}
    if "r" in free:
        updates["r"] = r
    if "num_terms" in free:
        updates["num_terms"] = t
    if "factors" in free:
        updates["in_factors"], updates["out_factors"] = in_f, out_f
    return Match("lsr", updates, size, budget, n, {**base, **updates})


def match_budget(method: str, shapes: list[LayerShape], budget: int, base: dict | None = None,
                 lsr_free=("num_terms",)) -> Match:
    """Dispatch to the method's matcher and check the pick against the real layer class."""
    if method not in BUDGET_METHODS:
        raise LsrAdaptError(f"budget.params sets the size of {' and '.join(BUDGET_METHODS)} adapters; "
                            f"adaptation_type {method!r} has no size rule here (size it by hand, budget.params=null)")
    match = match_lora(shapes, budget, base) if method == "lora" else match_lsr(shapes, budget, base, lsr_free)
    real = real_size(method, shapes, match.values)
    if real != match.adapter_params:
        raise RuntimeError(f"budget formula for {method} gives {match.adapter_params} but the layers hold {real}")
    return match


def apply_budget(loaded, adaptation_type: str, method_values: dict, target_modules, budget_cfg) -> dict:
    """``budget.params`` → the method config with its size fields set (``train()``'s hook)."""
    head = head_parameter_names(loaded.model, loaded.new_param_names)
    exclude = sorted({n.rsplit(".", 1)[0] for n in head})  # as prepare_model excludes the head
    shapes = target_shapes(loaded.model, target_modules, exclude)
    free = list(budget_cfg.get("lsr_free") or ["num_terms"])
    match = match_budget(adaptation_type, shapes, budget_cfg.get("params"), method_values, free)
    check_tolerance(match, budget_cfg)
    log.info("budget.params=%d over %d layers: %s", match.budget, len(shapes), match.describe())
    return match.values


DEFAULT_TOLERANCE = 0.25  # conf/config.yaml's budget.tolerance (for budget configs written without it)


def check_tolerance(match: Match, budget_cfg) -> None:
    """A pick that misses the budget by more than ``budget.tolerance`` (a fraction) is an error naming
    both sizes, unless ``budget.allow_nearest=true``: then it trains, with a warning line."""
    tolerance = budget_cfg.get("tolerance")
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if abs(match.rel_error) <= tolerance:
        return
    if budget_cfg.get("allow_nearest"):
        log.warning("budget.params=%d: the nearest %s misses it by %+.1f%% (beyond budget.tolerance=%g; "
                    "budget.allow_nearest=true)", match.budget, match.describe(), 100 * match.rel_error, tolerance)
        return
    raise LsrAdaptError(f"budget.params={match.budget}: the nearest {match.describe()}, off by more than "
                        f"budget.tolerance={tolerance:g} ({100 * tolerance:g}%); choose a budget near a size the "
                        f"method has, or set budget.allow_nearest=true to train that size anyway")


# -- command line ----------------------------------------------------------------------------------
def meta_model(model: str | None = None, arch: str | None = None) -> nn.Module:
    """A classifier with the architecture of ``model`` (hub id / local dir) or ``arch`` (a model type at
    its transformers default size, e.g. roberta = roberta-base), on the meta device: no weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if arch:
        from transformers import CONFIG_MAPPING

        if arch not in CONFIG_MAPPING:
            raise LsrAdaptError(f"unknown arch {arch!r}: give a transformers model type, e.g. roberta, bert, "
                                f"deberta-v2, gpt2, llama")
        config = AutoConfig.for_model(arch)
    else:
        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise LsrAdaptError(f"cannot load the config of model {model!r}: {first_line(e)[:200]}") from None
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lsr_adapt.budget", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id or local checkpoint dir (only its config is read)")
    src.add_argument("--arch", help="a model type at transformers' default size, e.g. roberta, bert, gpt2")
    p.add_argument("--params", type=int, required=True, help="adapter parameter budget")
    p.add_argument("--target-modules", nargs="+", default=None, help="default: the architecture's q/v")
    p.add_argument("--lsr-r", type=int, default=2)
    p.add_argument("--lsr-terms", type=int, default=16)
    p.add_argument("--lsr-free", nargs="+", default=["num_terms"], choices=LSR_FREE_FIELDS)
    args = p.parse_args(argv)

    def run():
        model = meta_model(args.model, args.arch)
        exclude = sorted({n.rsplit(".", 1)[0] for n in head_parameter_names(model)})
        tm = args.target_modules
        shapes = target_shapes(model, tm[0] if tm and len(tm) == 1 and tm[0] == "all-linear" else tm, exclude)
        print(f"{len(shapes)} target layers, shapes (in, out): "
              f"{sorted({(s.in_features, s.out_features) for s in shapes})}")
        lsr_base = {"r": args.lsr_r, "num_terms": args.lsr_terms}
        print(f"natural sizes: lora r=8: {lora_size(shapes, 8):,}; lsr r={args.lsr_r} t={args.lsr_terms}: "
              f"{lsr_size(shapes, args.lsr_r, args.lsr_terms):,}")
        for method, base in (("lora", {"r": 8}), ("lsr", lsr_base)):
            print(match_budget(method, shapes, args.params, base, args.lsr_free).describe())

    exit_on_user_error(run)


if __name__ == "__main__":
    main(sys.argv[1:])
