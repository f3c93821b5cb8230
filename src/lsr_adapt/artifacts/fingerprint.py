"""A cheap fingerprint of the frozen base weights an adapter was trained on.

Saved in ``adapter_config.json`` (``base_fingerprint``) and checked whenever an adapter is loaded,
so an adapter is never silently applied to another base model.
"""

from __future__ import annotations

import base64
import hashlib
import math

import torch
from torch import nn

from ..adapters import adapter_entry_names, adapter_layers

FINGERPRINT_ALGORITHM = "sha256-strided-bf16-v1"
FINGERPRINT_SAMPLES = 1024  # values hashed per tensor
PROBE_SAMPLES = 4  # values kept in clear per tensor, to tell "other precision" from "other weights"


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def base_tensors(model: nn.Module, exclude=()) -> dict[str, torch.Tensor]:
    """The frozen base weights under their names in the plain (unwrapped) model, unmerged values."""
    excluded = {_base_name(n) for n in exclude} | {_base_name(n) for n in adapter_entry_names(model)}
    unmerged = {f"{ln}.base_layer.weight": layer._unmerged_weight
                for ln, layer in adapter_layers(model).items() if layer.merged}
    out = {}
    for name, p in model.named_parameters():
        base = _base_name(name)
        if base not in excluded:
            out[base] = unmerged.get(name, p)
    return out


def _strided(t: torch.Tensor, n: int) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // n)][:n].to("cpu", torch.float32)


def _quantized(t: torch.Tensor) -> bool:
    return getattr(t, "quant_state", None) is not None  # a bitsandbytes 4-bit weight (QLoRA's base)


def base_fingerprint(model: nn.Module, exclude=(), skip_values=()) -> dict:
    """A cheap fingerprint of the base weights an adapter is trained on (``exclude``: saved names).

    ``structure`` is a sha256 over the sorted names and shapes of the frozen base parameters;
    ``values`` a sha256 over a strided sample of up to 1,024 values of each, rounded to bfloat16
    (so the same base loaded in fp32 or bf16 matches); ``probe`` keeps 4 values per tensor in clear
    so that when ``values`` differs, a base in another precision (fp16) is told apart from other
    weights. It catches: another checkpoint (other pretraining, seed, size or a fine-tuned base),
    another architecture, missing or extra layers, a different vocabulary. It cannot see changes
    confined to entries off the sampling grid (a base edited in a few entries), nor the values of
    4-bit quantized weights (QLoRA's base: their names and logical shapes only, ``values_skipped``).
    """
    tensors = base_tensors(model, exclude)
    skip = set(skip_values) | {n for n, t in tensors.items() if _quantized(t)}
    structure, values, probe = hashlib.sha256(), hashlib.sha256(), []
    for name in sorted(tensors):
        t = tensors[name]
        shape = tuple(t.quant_state.shape) if _quantized(t) else tuple(t.shape)
        structure.update(f"{name}:{shape};".encode())
        if name in skip:
            continue
        values.update(_strided(t, FINGERPRINT_SAMPLES).to(torch.bfloat16).view(torch.int16).numpy().tobytes())
        probe.append(_strided(t, PROBE_SAMPLES))
    probe_bytes = torch.cat(probe).numpy().tobytes() if probe else b""
    return {"algorithm": FINGERPRINT_ALGORITHM, "num_tensors": len(tensors),
            "num_values": sum(math.prod(tuple(t.quant_state.shape) if _quantized(t) else t.shape)
                              for t in tensors.values()),
            "structure": structure.hexdigest(), "values": values.hexdigest(),
            "probe": base64.b64encode(probe_bytes).decode(), "values_skipped": sorted(skip)}


def fingerprint_problem(model: nn.Module, expected: dict, exclude=()) -> str | None:
    """None if the model's base matches ``expected``, else what differs, in a few words."""
    if expected.get("algorithm") != FINGERPRINT_ALGORITHM:
        return f"unknown fingerprint algorithm {expected.get('algorithm')!r} (this is {FINGERPRINT_ALGORITHM})"
    skipped = expected.get("values_skipped", [])
    got = base_fingerprint(model, exclude, skip_values=skipped)
    if got["structure"] != expected.get("structure"):
        return (f"the base model's layers differ ({got['num_tensors']} base tensors with "
                f"{got['num_values']:,} values here, {expected.get('num_tensors')} with "
                f"{expected.get('num_values', 0):,} when the adapter was trained)")
    if got["values_skipped"] != sorted(skipped):
        return "the base model is 4-bit quantized here but was not when the adapter was trained"
    if got["values"] == expected.get("values"):
        return None
    mine = torch.frombuffer(bytearray(base64.b64decode(got["probe"])), dtype=torch.float32)
    theirs = torch.frombuffer(bytearray(base64.b64decode(expected.get("probe", ""))), dtype=torch.float32)
    # fp16 keeps 11 significant bits: a base loaded in fp16 is within 2⁻¹¹ relative of the original
    if mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=2**-8, atol=1e-6):
        return None
    return "the base model's weights differ from those the adapter was trained on"
