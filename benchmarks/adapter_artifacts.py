"""Adapter file sizes and task-switch times on a RoBERTa-base-shaped classifier (random init, no hub).

    python benchmarks/adapter_artifacts.py [--device cpu|cuda] [--switches 50] [--json out.json]

Sizes: ``save_adapter`` of LoRA r=8 and LSR r=2, t=16 on query/value of all 12 layers, with the
2-class head (RoBERTa's classifier: 768·768 + 768 + 2·768 + 2 = 592,130 parameters), fp32.
Switching: one base model in memory, adapters loaded by name with ``AdapterBank.load(path, name=)``,
median wall time of ``AdapterBank.activate`` (a) between two LoRA adapters of the same shape (tensors
copied in place), (b) the same on a merged model (unmerge, copy, merge), (c) between LoRA and LSR
(adapter layers rebuilt around the same base layers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout, installed or not

from lsr_adapt.adapters import adapter_entry_names, adapter_layers, merge_adapters, unmerge_adapters  # noqa: E402
from lsr_adapt.artifacts import ADAPTER_WEIGHTS, AdapterBank, read_weights, save_adapter  # noqa: E402
from lsr_adapt.modeling import LoadedModel, prepare_model  # noqa: E402

METHODS = {"lora_r8": ("lora", {"r": 8, "alpha": 8}), "lsr_r2_t16": ("lsr", {"r": 2, "num_terms": 16}),
           "lora_r8_b": ("lora", {"r": 8, "alpha": 8})}


def base_model(device: str):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2)).to(device).eval()  # roberta-base shape


def make_adapter(method: str, cfg: dict, out: Path, device: str, seed: int) -> dict:
    loaded = LoadedModel(base_model(device), None, "roberta-base (random init)")
    counts = prepare_model(loaded, method, cfg, ["query", "value"]).counts
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.device))
    save_adapter(loaded.model, out, {"adaptation_type": method, "method_config": cfg, "base_model": "roberta-base",
                                     "num_labels": 2, "task": "benchmark"})
    tensors = read_weights(out / ADAPTER_WEIGHTS)
    adapter = adapter_entry_names(loaded.model)
    return {
        "file_bytes": (out / ADAPTER_WEIGHTS).stat().st_size,
        "adapter_params": counts["adapter_params"],
        "head_params": counts["head_params"],
        "adapter_bytes": sum(t.numel() * t.element_size() for n, t in tensors.items() if n in adapter),
        "head_bytes": sum(t.numel() * t.element_size() for n, t in tensors.items() if n not in adapter),
    }


def time_switches(bank: AdapterBank, names: list[str], n: int, device: str) -> float:
    times = []
    for i in range(n):
        start = time.perf_counter()
        bank.activate(names[i % len(names)])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[len(names):]) * 1e3  # the first round builds caches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--switches", type=int, default=50)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "sizes": {}, "switch_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for seed, (key, (method, cfg)) in enumerate(METHODS.items()):
            dirs[key] = Path(tmp) / key
            with torch.enable_grad():
                info = make_adapter(method, cfg, dirs[key], args.device, seed)
            if key != "lora_r8_b":
                results["sizes"][key] = info
                print(f"{key}: file {info['file_bytes'] / 1024:.1f} KiB = adapter {info['adapter_params']:,} params "
                      f"({info['adapter_bytes'] / 1024:.1f} KiB) + head {info['head_params']:,} params "
                      f"({info['head_bytes'] / 1024:.1f} KiB)")
        model = base_model(args.device)
        bank = AdapterBank(model)
        start = time.perf_counter()
        for key, d in dirs.items():
            bank.load(d, name=key)
        results["load_ms_per_adapter"] = (time.perf_counter() - start) / len(dirs) * 1e3
        cases = {"lora_to_lora_in_place": ["lora_r8", "lora_r8_b"], "lora_to_lsr_rebuild": ["lora_r8", "lsr_r2_t16"]}
        for case, names in cases.items():
            results["switch_ms"][case] = time_switches(bank, names, args.switches, args.device)
        bank.activate("lora_r8")
        merge_adapters(model)
        results["switch_ms"]["lora_to_lora_merged"] = time_switches(bank, ["lora_r8", "lora_r8_b"], args.switches,
                                                                    args.device)
        assert all(layer.merged for layer in adapter_layers(model).values())
        unmerge_adapters(model)
    print(f"load_adapter (incl. fingerprint check): {results['load_ms_per_adapter']:.1f} ms per adapter")
    for case, ms in results["switch_ms"].items():
        print(f"switch {case}: {ms:.2f} ms (median of {args.switches})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
