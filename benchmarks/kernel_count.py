"""Dispatched aten ops and kernels of one adapted 768×768 layer, forward + backward (issue 22).

    python benchmarks/kernel_count.py [--json docs/kernel_count.json]

One ``nn.Linear(768, 768)`` (frozen, with bias), 8 × 64 tokens whose input requires a gradient,
CPU bf16 autocast (the stand-in for a CUDA bf16 step), counted with a ``TorchDispatchMode``:
"ops" are all aten ops reaching the dispatcher, "kernels" those that are neither views nor bare
allocations (``lsr_adapt.kernel_count``, shared with tests/test_kernel_budget.py, which holds the budgets). Exact and
repeatable: it counts, it does not time. Free of Hydra, like benchmarks/step_time.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, installed or not
from lsr_adapt.kernel_count import count_step  # noqa: E402  (after the path above)


def _base():
    torch.manual_seed(0)
    base = nn.Linear(768, 768)
    base.requires_grad_(False)
    return base


def _ours(kind, **cfg):
    def build():
        from lsr_adapt.adapters.dora import DoRALinear
        from lsr_adapt.adapters.lora import LoRALinear
        from lsr_adapt.adapters.lsr import LSRLinear

        return {"lora": LoRALinear, "lsr": LSRLinear, "dora": DoRALinear}[kind](_base(), **cfg)

    return build


def _peft(use_dora):
    def build():
        import peft

        holder = nn.Module()
        holder.proj = _base()
        model = peft.get_peft_model(holder, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["proj"],
                                                            use_dora=use_dora))
        return model.base_model.model.proj

    return build


LAYERS = {
    "frozen Linear": _base,
    "lora r=8 a=8": _ours("lora", r=8, alpha=8),
    "lora r=8 a=16": _ours("lora", r=8, alpha=16),
    "lsr r=2 t=16": _ours("lsr", r=2, num_terms=16),
    "dora r=8 a=16": _ours("dora", r=8, alpha=16),
    "peft lora r=8 a=16": _peft(False),
    "peft dora r=8 a=16": _peft(True),
}


def count(layer: nn.Module) -> dict:
    out = count_step(layer)
    out.pop("input")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for name, build in LAYERS.items():
        try:
            rows.append({"layer": name, **count(build())})
        except ImportError as e:  # peft missing: the peers are optional
            print(f"skipped {name}: {e}", file=sys.stderr)
    ref = next((r for r in rows if r["layer"] == "lora r=8 a=16"), None)
    print(f"torch {torch.__version__}; CPU bf16 autocast; one 768x768 layer, 8x64 tokens, forward + backward")
    print(f"{'layer':<22}{'ops':>6}{'kernels':>9}{'Δops':>7}{'Δkern':>7}")
    for r in rows:
        d_ops = f"{r['ops'] - ref['ops']:+d}" if ref else ""
        d_k = f"{r['kernels'] - ref['kernels']:+d}" if ref else ""
        print(f"{r['layer']:<22}{r['ops']:>6}{r['kernels']:>9}{d_ops:>7}{d_k:>7}")
    if args.json:
        from lsr_adapt.iofiles import write_json

        write_json(args.json, {"torch": torch.__version__, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
