"""Training-step and inference time of every method on a RoBERTa-base-shaped classifier, in one run.

    python benchmarks/step_time.py --device cpu --batch 8 --seq 128 --json step_time_cpu.json
    python benchmarks/step_time.py --device cuda --json step_time_h100.json          # bf16 autocast

A training step is forward + backward + AdamW step on a random-init RoBERTa-base-shaped
classifier (no hub needed; timing does not depend on the weights' values). Memory: on CUDA the
peak allocated bytes of the step; on CPU the bytes autograd saves for backward (activations,
each storage counted once) plus gradients and AdamW state of the trainable parameters, which is
what a method changes. Free of Hydra so it runs wherever torch, transformers and peft are.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, installed or not

from lsr_adapt.adapters import adapter_layers, apply_adapter, merge_adapters  # noqa: E402
from lsr_adapt.iofiles import write_json  # noqa: E402
from lsr_adapt.modeling import mark_trainable  # noqa: E402

TARGETS = ["query", "value"]
HEAD = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"]


def _ours(adaptation_type: str, **cfg) -> Callable[[nn.Module], nn.Module]:
    def build(model):
        apply_adapter(model, adaptation_type, cfg, TARGETS, exclude=["classifier"])
        mark_trainable(model, HEAD)
        return model

    return build


def _randomize_b(model: nn.Module) -> None:
    """ΔW = 0 at init; give the output-side factors values so merged weights really change."""
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for name in layer.b_params:
                getattr(layer, name).normal_(0, 0.02)


def _merged(build):
    def merged(model):
        model = build(model)
        _randomize_b(model)
        merge_adapters(model)
        return model

    return merged


def _peft(kind: str):
    def build(model):
        import peft

        if kind == "lora":
            cfg = peft.LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, task_type="SEQ_CLS")
        elif kind == "dora":
            cfg = peft.LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, task_type="SEQ_CLS", use_dora=True)
        else:
            cfg = peft.LoKrConfig(r=8, alpha=8, target_modules=TARGETS, task_type="SEQ_CLS")
        return peft.get_peft_model(model, cfg)

    return build


def _full(model):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _head(model):
    mark_trainable(model, HEAD)
    return model


# name -> (builder, what to time). Other methods register here the same way.
METHODS: dict[str, tuple[Callable[[nn.Module], nn.Module], str]] = {
    "full": (_full, "train"),
    "head": (_head, "train"),
    "lora": (_ours("lora", r=8, alpha=8), "train"),
    "lsr": (_ours("lsr", r=2, num_terms=16, alpha=2), "train"),
    "lsr_dense": (_ours("lsr", r=2, num_terms=16, alpha=2, path="dense"), "train"),
    "lsr_activations": (_ours("lsr", r=2, num_terms=16, alpha=2, path="activations"), "train"),
    "peft_lora": (_peft("lora"), "train"),
    "peft_lokr": (_peft("lokr"), "train"),
    # the LoRA family (docs/methods.md)
    "dora": (_ours("dora", r=8, alpha=8), "train"),
    "peft_dora": (_peft("dora"), "train"),
    "lora_fa": (_ours("lora_fa", r=8, alpha=8), "train"),
    "dylora": (_ours("dylora", r=8, alpha=8), "train"),
    "qlora": (_ours("qlora", r=8, alpha=8), "train"),
    "base": (lambda m: m, "infer"),
    "lora_unmerged": (_ours("lora", r=8, alpha=8), "infer"),
    "lsr_unmerged": (_ours("lsr", r=2, num_terms=16, alpha=2), "infer"),
    "lora_merged": (_merged(_ours("lora", r=8, alpha=8)), "infer"),
    "lsr_merged": (_merged(_ours("lsr", r=2, num_terms=16, alpha=2)), "infer"),
}


# cpu: this process's CPU time, steadier than wall time on a shared machine (use with --threads 1)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CUDA_ONLY = {"qlora"}  # bitsandbytes' CPU path works (tests) but is not what QLoRA is timed for


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, device, warmup: int, iters: int, clock=time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = clock()
        fn()
        _sync(device)
        times.append((clock() - t0) * 1e3)
    return statistics.median(times)


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward during ``fn`` (each storage once)."""
    seen = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def bench(name, build, kind, base_state, config, args, device, dtype):
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    model.load_state_dict(base_state)
    model = build(model).to(device)
    if args.compile:
        model = torch.compile(model)
    ids = torch.randint(5, config.vocab_size, (args.batch, args.seq), device=device)
    labels = torch.randint(0, 2, (args.batch,), device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    row = {"method": name, "trainable": sum(p.numel() for p in trainable)}
    quantized = [p for p in model.parameters() if getattr(p, "quant_state", None) is not None]
    if quantized:  # QLoRA: bytes per 4-bit base weight, quantisation statistics included
        from lsr_adapt.adapters.qlora import weight_memory

        row["bytes_per_quantized_param"] = weight_memory(model)["bytes_per_quantized_param"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(trainable, lr=1e-4)

        def step():
            with autocast:
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        row["step_ms"] = _timeit(step, device, args.warmup, args.iters, CLOCKS[args.clock])
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            with autocast:
                saved, out = _saved_bytes(lambda: model(input_ids=ids, labels=labels).loss)
            del out
            state = sum(p.numel() * p.element_size() * 3 for p in trainable)  # grad + Adam m, v
            row["peak_mib"] = (saved + state) / 2**20
    else:
        model.eval()

        def infer():
            with torch.no_grad(), autocast:
                model(input_ids=ids)

        row["infer_ms"] = _timeit(infer, device, args.warmup, args.iters, CLOCKS[args.clock])
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    model = None  # free it before the next method (a `del` trips ruff F821 in the closures above)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 32 on cuda, 8 on cpu")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=None, help="default: 10 on cuda, 2 on cpu")
    p.add_argument("--iters", type=int, default=None, help="default: 50 on cuda, 5 on cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process CPU time (shared CPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(METHODS)
                   + f" (default: all; on cpu all but {', '.join(sorted(CUDA_ONLY))})")
    p.add_argument("--json", type=Path, help="write the rows here (a JSON list)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.batch = args.batch or (32 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.iters = args.iters or (50 if cuda else 5)
    if args.methods is None:
        args.methods = ",".join(m for m in METHODS if cuda or m not in CUDA_ONLY)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; valid choices: {', '.join(METHODS)}")
    if not cuda and CUDA_ONLY & set(names):
        p.error(f"{', '.join(sorted(CUDA_ONLY & set(names)))} is timed on --device cuda only")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype, torch.bfloat16 if cuda else torch.float32)
    device = torch.device(args.device)

    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(num_labels=2)  # RoBERTa-base shapes
    torch.manual_seed(0)
    base_state = copy.deepcopy(RobertaForSequenceClassification(config).state_dict())
    rows = []
    for name in names:
        build, kind = METHODS[name]
        row = bench(name, build, kind, base_state, config, args, device, dtype)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    by = {r["method"]: r for r in rows}

    def ratio(r, key, ref):
        return f"{r[key] / by[ref][key]:.2f}" if key in r and ref in by and key in by[ref] else ""

    print(f"\ndevice: {torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()}; "
          f"torch {torch.__version__}; batch {args.batch} x {args.seq} tokens; {str(dtype).split('.')[-1]}"
          f"{'; torch.compile' if args.compile else ''}; median of {args.iters} after {args.warmup} warm-up"
          f"{'; CPU-time clock' if args.clock == 'cpu' else ''}{f'; {args.threads} thread(s)' if args.threads else ''}")
    print(f"{'method':<16}{'trainable':>12}{'step ms':>10}{'/lora':>7}{'/full':>7}{'infer ms':>10}{'/base':>7}{'MiB':>9}")
    for r in rows:
        print(f"{r['method']:<16}{r['trainable']:>12,}{r.get('step_ms', float('nan')):>10.1f}"
              f"{ratio(r, 'step_ms', 'lora'):>7}{ratio(r, 'step_ms', 'full'):>7}"
              f"{r.get('infer_ms', float('nan')):>10.1f}{ratio(r, 'infer_ms', 'base'):>7}"
              f"{(r['peak_mib'] or float('nan')):>9.0f}")
    if args.json:
        meta = {"device": args.device, "batch": args.batch, "seq": args.seq, "dtype": str(dtype), "torch": torch.__version__,
                "clock": args.clock, "threads": args.threads or torch.get_num_threads()}
        write_json(args.json, [dict(r, **meta) for r in rows])


if __name__ == "__main__":
    main()
