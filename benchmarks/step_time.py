"""Training-step and inference time of every method at two scales and in three execution modes, in one run.

    python benchmarks/step_time.py --tiny --json /tmp/step_time_tiny.json              # CPU rehearsal, ~1 CPU-min
    python benchmarks/step_time.py --device cpu --scales roberta --modes eager --batch 4 --seq 128 \\
        --clock cpu --threads 1 --json docs/step_time_cpu.json
    bash benchmarks/gpu_check.sh                                                       # everything on a GPU

Scales (random init, no hub: timing does not depend on the weights' values):

* ``roberta``: a RoBERTa-base-shaped classifier (125M), adapters on query and value of its 12
  layers, batch 32 × 128 on CUDA. A step is ~1.5 TFLOP, ~2 ms of H100 bf16 arithmetic, yet took
  ~43 ms: it is launch-bound (docs/benchmarks.md).
* ``llama1b``: a Llama-style causal LM of ~1.0B parameters (Llama-3.2-1B's body: hidden 2048,
  16 layers, MLP 8192, 32 heads / 8 KV heads; a 32,000-token vocabulary), adapters on all
  attention and MLP projections, batch 4 × 1024 on CUDA: compute-bound.

Modes (``--modes``):

* ``eager``: plain PyTorch;
* ``compiled``: regional ``torch.compile`` of the repeated transformer block (one compile shared by
  every layer: the block is the whole step's FLOPs and kernels, at a tenth of the compile time of
  the whole model);
* ``graphed``: the whole eager step (forward, backward and a capturable AdamW step) captured once
  as a CUDA graph and replayed: one launch per step (CUDA only);
* ``compiled_graphed``: the compiled blocks inside the captured step (CUDA only);
* ``reduce_overhead``: ``torch.compile(model, mode="reduce-overhead")`` of the whole model, what
  ``training.torch_compile=true training.torch_compile_mode=reduce-overhead`` gives the Trainer
  (CUDA only; its compile takes about a minute per method).

Timing: CUDA events around each step on CUDA (the median), ``--clock`` on CPU. Memory: on CUDA the
peak allocated bytes of the timed steps; on CPU (eager) the bytes autograd saves for backward plus
gradients and AdamW state of the trainable parameters. After timing, one step runs under
``torch.profiler``; its summary (kernels per step, the top kernels by time) goes beside the JSON
(``<json>.profile.json``) and, with ``--trace-dir``, the gzipped Chrome trace. Free of Hydra so it
runs wherever torch, transformers and peft are.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout, installed or not

from lsr_adapt.adapters import adapter_layers, apply_adapter, merge_adapters  # noqa: E402
from lsr_adapt.iofiles import write_json  # noqa: E402
from lsr_adapt.modeling import mark_trainable  # noqa: E402

ROBERTA_HEAD = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                "classifier.out_proj.bias"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- the two scales --------------------------------------------------------------------------------
class Scale:
    """A model family at one size: how to build it, what to adapt, what a batch is."""

    def __init__(self, name, config_fn, model_cls, targets, head, task, batch, seq, cpu_batch):
        self.name, self.config_fn, self.model_cls = name, config_fn, model_cls
        self.targets, self.head, self.task = targets, head, task
        self.batch, self.seq, self.cpu_batch = batch, seq, cpu_batch

    def config(self, tiny: bool):
        return self.config_fn(tiny)

    def model_class(self):
        import transformers

        return getattr(transformers, self.model_cls)


def _roberta_config(tiny):
    from transformers import RobertaConfig

    if tiny:
        return RobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=130, num_labels=2)
    return RobertaConfig(num_labels=2)  # RoBERTa-base shapes


def _llama_config(tiny):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True)
    # Llama-3.2-1B's body with Llama-2's 32k vocabulary (128k would make the loss, not the body, the cost)
    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=1024,
                       tie_word_embeddings=True, rope_theta=500000.0)


SCALES = {
    "roberta": Scale("roberta", _roberta_config, "RobertaForSequenceClassification", ["query", "value"],
                     ROBERTA_HEAD, "SEQ_CLS", batch=32, seq=128, cpu_batch=8),
    "llama1b": Scale("llama1b", _llama_config, "LlamaForCausalLM", LLAMA_TARGETS, [], "CAUSAL_LM",
                     batch=4, seq=1024, cpu_batch=1),
}


# -- methods ---------------------------------------------------------------------------------------
def _ours(adaptation_type: str, **cfg) -> Callable:
    def build(model, scale):
        exclude = ["classifier"] if scale.head else ["lm_head"]
        apply_adapter(model, adaptation_type, cfg, scale.targets, exclude=exclude)
        mark_trainable(model, scale.head)
        return model

    return build


def _randomize_b(model: nn.Module) -> None:
    """ΔW = 0 at init; give the output-side factors values so merged weights really change."""
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for name in layer.b_params:
                getattr(layer, name).normal_(0, 0.02)


def _merged(build):
    def merged(model, scale):
        model = build(model, scale)
        _randomize_b(model)
        merge_adapters(model)
        return model

    return merged


def _peft(kind: str):
    def build(model, scale):
        import peft

        common = dict(target_modules=scale.targets, task_type=scale.task)
        if kind == "lokr":
            cfg = peft.LoKrConfig(r=8, alpha=8, **common)
        else:
            cfg = peft.LoraConfig(r=8, lora_alpha=8, use_dora=kind == "dora", **common)
        return peft.get_peft_model(model, cfg)

    return build


def _full(model, scale):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _head(model, scale):
    mark_trainable(model, scale.head)
    return model


# name -> (builder, what to time). Other methods register here the same way.
METHODS: dict[str, tuple[Callable, str]] = {
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
    "base": (lambda m, s: m, "infer"),
    "lora_unmerged": (_ours("lora", r=8, alpha=8), "infer"),
    "lsr_unmerged": (_ours("lsr", r=2, num_terms=16, alpha=2), "infer"),
    "lora_merged": (_merged(_ours("lora", r=8, alpha=8)), "infer"),
    "lsr_merged": (_merged(_ours("lsr", r=2, num_terms=16, alpha=2)), "infer"),
}
# --tiny times one representative of each code path (a peft model, a merged one, ...): a rehearsal
TINY_METHODS = ("full", "lora", "lsr", "dora", "peft_lora", "peft_dora", "base", "lsr_unmerged", "lsr_merged")
MODES = ("eager", "compiled", "graphed", "compiled_graphed", "reduce_overhead")
CUDA_MODES = {"graphed", "compiled_graphed", "reduce_overhead"}
CUDA_ONLY = {"qlora"}  # bitsandbytes' CPU path works (tests) but is not what QLoRA is timed for
NOT_HEAD = {"head"}  # the LM scale trains no head: "head" only makes sense for the classifier
# a step that changes on the host from one call to the next cannot be replayed from a capture
# (DyLoRA draws a rank per step) nor compiled once (bitsandbytes' 4-bit kernels)
NOT_COMPILED = {"dylora", "qlora"}

# cpu: this process's CPU time, steadier than wall time on a shared machine (use with --threads 1)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# -- timing ----------------------------------------------------------------------------------------
def _time_steps(fn, device, warmup: int, iters: int, clock) -> list[float]:
    """Milliseconds of each of ``iters`` calls after ``warmup``: CUDA events on CUDA (device time
    between the step's first and last kernel, host gaps included), ``clock`` on CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
    return times


def _saved_bytes(fn):
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


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The repeated transformer blocks (``encoder.layer`` / ``model.layers``), wrapped or not by peft."""
    lists = [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.split(".")[-1] in ("layer", "layers")]
    if not lists:
        raise RuntimeError(f"no transformer block list in {type(model).__name__}")
    return max(lists, key=len)


def _capture(body, device) -> Callable[[], None]:
    """``body`` (forward + backward + optimizer step) captured as one CUDA graph; returns its replay.

    The recipe of PyTorch's "whole-network capture": warm-up iterations on a side stream (they
    also trigger any compilation), gradients set to None so the captured backward allocates them
    from the graph's pool, then one capture; every replay reruns the same kernels on the same memory.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            body(zero=True)
    torch.cuda.current_stream(device).wait_stream(side)
    body.zero_grad()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body(zero=False)
    return graph.replay


def _profile(fn, device, trace_path: Path | None) -> dict:
    """One call of ``fn`` under torch.profiler: kernels per step and the top kernels by time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()  # one more warm call, so nothing lazy lands in the profiled step
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    out = {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}
    launches = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")
    out["host_launch_calls"] = sum(1 for e in events if e.name in launches)
    averages = prof.key_averages()

    def self_device_us(a):
        return getattr(a, "self_device_time_total", None) or getattr(a, "self_cuda_time_total", 0)

    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        out["kernels"] = len(kernels)
        out["device_ms"] = sum(e.self_device_time_total if hasattr(e, "self_device_time_total")
                               else e.self_cuda_time_total for e in kernels) / 1e3
        top = sorted((a for a in averages if a.device_type == DeviceType.CUDA), key=self_device_us, reverse=True)
        out["top_kernels"] = [{"name": a.key[:160], "calls": a.count, "ms": self_device_us(a) / 1e3} for a in top[:12]]
    else:  # no device kernels on a CPU: the aten ops are the launches' stand-in
        top = sorted((a for a in averages if a.key.startswith("aten::")), key=lambda a: a.self_cpu_time_total,
                     reverse=True)
        out["top_ops"] = [{"name": a.key, "calls": a.count, "ms": a.self_cpu_time_total / 1e3} for a in top[:12]]
    if trace_path is not None:
        raw = trace_path.with_suffix("")  # .json.gz -> .json
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(trace_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        out["trace"] = trace_path.name
    return out


# -- one row ---------------------------------------------------------------------------------------
def _base_model(scale: Scale, config, device) -> nn.Module:
    """The scale's random-init model, built on the device with one seed: every method starts from
    the same weights."""
    torch.manual_seed(0)
    with torch.device(device):
        return scale.model_class()(config)


def bench(name, mode, scale, config, args, device, dtype, trace_dir: Path | None) -> dict:
    build, kind = METHODS[name]
    torch._dynamo.reset()  # a method's compiled blocks never reuse (or crowd the cache of) another's
    model = build(_base_model(scale, config, device), scale)
    batch, seq = args.batch, args.seq
    ids = torch.randint(5, config.vocab_size, (batch, seq), device=device)
    labels = torch.randint(0, 2, (batch,), device=device) if scale.head else ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    graphed = mode in ("graphed", "compiled_graphed")
    # autocast's weight-cast cache must be off inside a graph capture (PyTorch's CUDA graph notes)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32, cache_enabled=not graphed)
    row = {"scale": scale.name, "method": name, "mode": mode, "kind": kind,
           "trainable": sum(p.numel() for p in trainable), "tokens": batch * seq}
    quantized = [p for p in model.parameters() if getattr(p, "quant_state", None) is not None]
    if quantized:  # QLoRA: bytes per 4-bit base weight, quantisation statistics included
        from lsr_adapt.adapters.qlora import weight_memory

        row["bytes_per_quantized_param"] = weight_memory(model)["bytes_per_quantized_param"]
    if mode in ("compiled", "compiled_graphed"):
        for block in _blocks(model):
            block.compile(backend=args.compile_backend)
    run_model = torch.compile(model, mode="reduce-overhead") if mode == "reduce_overhead" else model

    if kind == "train":
        model.train()
        opt = torch.optim.AdamW(trainable, lr=1e-4, capturable=graphed) if trainable else None

        class Body:
            def __call__(self, zero=True):
                with autocast:
                    loss = run_model(input_ids=ids, labels=labels).loss
                loss.backward()
                opt.step()
                if zero:
                    opt.zero_grad(set_to_none=True)

            def zero_grad(self):
                opt.zero_grad(set_to_none=True)

        body = Body()
        fn = _capture(body, device) if graphed else body
    else:
        model.eval()

        class Body:
            def __call__(self, zero=True):
                with torch.no_grad(), autocast:
                    run_model(input_ids=ids)

            def zero_grad(self):
                pass

        body = Body()
        fn = _capture(body, device) if graphed else body

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = _time_steps(fn, device, args.warmup, args.iters, CLOCKS[args.clock])
    row["ms"] = statistics.median(times)
    row["ms_min"] = min(times)
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif kind == "train" and mode == "eager":
        with autocast:
            saved, out = _saved_bytes(lambda: model(input_ids=ids, labels=labels).loss)
        del out
        state = sum(p.numel() * p.element_size() * 3 for p in trainable)  # grad + Adam m, v
        row["peak_mib"] = (saved + state) / 2**20
    if not args.no_profile:
        wanted = trace_dir and (args.trace_methods is None or name in args.trace_methods.split(","))
        trace = trace_dir / f"{scale.name}.{name}.{mode}.json.gz" if wanted else None
        row["profile"] = _profile(fn, device, trace)
    return row


# -- the run ---------------------------------------------------------------------------------------
def _versions(device) -> dict:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "command": " ".join([sys.executable, *sys.argv])}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        out["peft"] = None
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            out["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["nvidia_smi"] = f"unavailable: {e}"
    else:
        out["device"] = "cpu"
    try:
        out["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _plan(args, cuda: bool) -> list[tuple[str, str, str]]:
    """(scale, method, mode) triples in run order: every eager row first, then the other modes."""
    out = []
    for mode in args.modes:
        for scale in args.scales:
            for name in args.methods_for[mode]:
                if scale == "llama1b" and name in NOT_HEAD:
                    continue
                if name in CUDA_ONLY and not cuda:
                    continue
                if mode != "eager" and name in NOT_COMPILED:
                    continue
                out.append((scale, name, mode))
    return out


def _print_table(rows, meta):
    by = {(r["scale"], r["method"], r["mode"]): r for r in rows}

    def ratio(r, ref_method, ref_mode=None):
        ref = by.get((r["scale"], ref_method, ref_mode or r["mode"]))
        return f"{r['ms'] / ref['ms']:.2f}" if ref else ""

    print(f"\ndevice: {meta['device']}; torch {meta['torch']}; {meta['dtype']}; median of {meta['iters']} after "
          f"{meta['warmup']} warm-up{'; CPU-time clock' if meta['clock'] == 'cpu' else ''}")
    print(f"{'scale':<9}{'mode':<17}{'method':<16}{'trainable':>13}{'ms':>10}{'/lora':>7}{'/peft_e':>8}"
          f"{'/full':>7}{'/base':>7}{'kernels':>9}{'MiB':>9}")
    for r in rows:
        prof = r.get("profile") or {}
        kernels = prof.get("kernels", prof.get("aten_ops", ""))
        train = r["kind"] == "train"
        print(f"{r['scale']:<9}{r['mode']:<17}{r['method']:<16}{r['trainable']:>13,}{r['ms']:>10.2f}"
              f"{ratio(r, 'lora') if train else '':>7}{ratio(r, 'peft_lora', 'eager') if train else '':>8}"
              f"{ratio(r, 'full') if train else '':>7}{'' if train else ratio(r, 'base'):>7}"
              f"{kernels:>9}{(r.get('peak_mib') or float('nan')):>9.0f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models, batch 2 x 32, 1+1 steps, a few methods: a rehearsal of every "
                   "code path (CPU: eager and compiled, with --compile-backend aot_eager; ~1 min of CPU time)")
    p.add_argument("--scales", default=None, help="comma-separated: " + ", ".join(SCALES)
                   + " (default: both on cuda and with --tiny; roberta on cpu)")
    p.add_argument("--modes", default=None, help="comma-separated: " + ", ".join(MODES)
                   + " (default: all on cuda; eager,compiled with --tiny on cpu; eager on cpu)")
    p.add_argument("--methods", default=None, help="comma-separated subset of: " + ", ".join(METHODS)
                   + " for eager (default: all that run on the device)")
    p.add_argument("--mode-methods", default=None, help="the methods timed in the modes other than eager "
                   "(compiles cost time; default: lora,lsr,dora,peft_lora,full; with --tiny lsr,dora, the two "
                   "custom autograd Functions)")
    p.add_argument("--batch", type=int, default=None, help="default: the scale's (roberta 32, llama1b 4; cpu 8 / 1)")
    p.add_argument("--seq", type=int, default=None, help="default: the scale's (roberta 128, llama1b 1024)")
    p.add_argument("--warmup", type=int, default=None, help="default: 5 on cuda, 2 on cpu")
    p.add_argument("--iters", type=int, default=None, help="default: 20 on cuda, 5 on cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on cuda, fp32 on cpu")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor; aot_eager "
                   "with --tiny on cpu, where inductor's C++ compile takes minutes)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process CPU time (shared CPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--no-profile", action="store_true", help="skip the one-step profiler summary")
    p.add_argument("--trace-dir", type=Path, default=None, help="write each profiled step's Chrome trace here (gzip)")
    p.add_argument("--trace-methods", default=None, help="only these methods' traces (default: every profiled one)")
    p.add_argument("--json", type=Path, help="write {meta, rows} here; the profile summaries go to <json>.profile.json")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.scales = [s.strip() for s in (args.scales or ("roberta,llama1b" if cuda or args.tiny else "roberta"))
                   .split(",") if s.strip()]
    if bad := [s for s in args.scales if s not in SCALES]:
        p.error(f"unknown scale(s) {bad}; valid choices: {', '.join(SCALES)}")
    default_modes = MODES if cuda else ("eager", "compiled") if args.tiny else ("eager",)
    args.modes = [m.strip() for m in (args.modes or ",".join(default_modes)).split(",") if m.strip()]
    if bad := [m for m in args.modes if m not in MODES]:
        p.error(f"unknown mode(s) {bad}; valid choices: {', '.join(MODES)}")
    if not cuda and (bad := [m for m in args.modes if m in CUDA_MODES]):
        if not args.tiny:
            p.error(f"mode(s) {', '.join(bad)} need CUDA graphs: --device cuda")
        print(f"CPU rehearsal: skipping mode(s) {', '.join(bad)} (CUDA graphs)", file=sys.stderr)
        args.modes = [m for m in args.modes if m not in CUDA_MODES]
    default_methods = TINY_METHODS if args.tiny else [m for m in METHODS if cuda or m not in CUDA_ONLY]
    eager_methods = [m.strip() for m in (args.methods or ",".join(default_methods)).split(",") if m.strip()]
    mode_methods = [m.strip() for m in (args.mode_methods or ("lsr,dora" if args.tiny else
                                                              "lora,lsr,dora,peft_lora,full")).split(",") if m.strip()]
    if bad := [m for m in eager_methods + mode_methods if m not in METHODS]:
        p.error(f"unknown method(s) {bad}; valid choices: {', '.join(METHODS)}")
    if not cuda and CUDA_ONLY & set(eager_methods) and args.methods:
        p.error(f"{', '.join(sorted(CUDA_ONLY & set(eager_methods)))} is timed on --device cuda only")
    if args.methods:  # an explicit list restricts every mode
        mode_methods = [m for m in mode_methods if m in eager_methods]
    args.methods_for = {mode: eager_methods if mode == "eager" else mode_methods for mode in MODES}
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5 if cuda else 2)
    args.iters = args.iters or (1 if args.tiny else 20 if cuda else 5)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.tiny and not cuda else "inductor")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype, torch.bfloat16 if cuda else torch.float32)
    device = torch.device(args.device)
    if args.trace_dir:
        args.trace_dir.mkdir(parents=True, exist_ok=True)

    meta = {**_versions(device), "dtype": str(dtype).split(".")[-1], "warmup": args.warmup, "iters": args.iters,
            "clock": args.clock if not cuda else "cuda events", "tiny": args.tiny,
            "compile_backend": args.compile_backend, "shapes": {}}
    rows, configs = [], {}
    scale_batch = {}
    for scale_name, name, mode in _plan(args, cuda):
        scale = SCALES[scale_name]
        if scale_name not in configs:
            configs[scale_name] = scale.config(args.tiny)
            scale_batch[scale_name] = (args.batch or (2 if args.tiny else scale.batch if cuda else scale.cpu_batch),
                                       args.seq or (32 if args.tiny else scale.seq))
            meta["shapes"][scale_name] = {"batch": scale_batch[scale_name][0], "seq": scale_batch[scale_name][1],
                                          "config": {k: v for k, v in configs[scale_name].to_dict().items()
                                                     if k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                              "num_attention_heads", "num_key_value_heads",
                                                              "vocab_size")}}
        run_args = copy.copy(args)
        run_args.batch, run_args.seq = scale_batch[scale_name]
        t0 = time.perf_counter()
        try:
            row = bench(name, mode, scale, configs[scale_name], run_args, device, dtype, args.trace_dir)
        except Exception as e:  # one method failing (e.g. a capture it does not support) must not lose the run
            row = {"scale": scale_name, "method": name, "mode": mode, "kind": METHODS[name][1], "trainable": 0,
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), file=sys.stderr, flush=True)
        if cuda:
            torch.cuda.empty_cache()
        if args.json:  # after every row: a run cut short keeps what it measured
            _write(args.json, meta, rows)
    _print_table([r for r in rows if "ms" in r], meta)
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['scale']} {r['method']} {r['mode']}: {r['error']}", file=sys.stderr)
    return rows


def _write(path: Path, meta: dict, rows: list[dict]) -> None:
    write_json(path, {"meta": meta, "rows": [{k: v for k, v in r.items() if k != "profile"} for r in rows]})
    profiles = [{"scale": r["scale"], "method": r["method"], "mode": r["mode"], **r["profile"]}
                for r in rows if r.get("profile")]
    if profiles:
        write_json(path.with_name(path.name.removesuffix(".json") + ".profile.json"), {"meta": meta, "profiles": profiles})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
