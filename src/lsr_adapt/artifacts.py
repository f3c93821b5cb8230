"""Adapters as artifacts: save, load with safety checks, keep several loaded and switch between them.

An adapter directory (every run directory is one) holds the same two file names peft uses:

* ``adapter_model.safetensors``: the adapter tensors (parameters and persistent buffers of every
  adapter layer) and every other trainable tensor (the task head), under their names in the model.
* ``adapter_config.json``: ``format: lsr-adapt``, method (``adaptation_type``) and its
  hyperparameters, the adapted layers, the head tensor names, base model id and the path it was
  loaded from, ``num_labels``, task, label names, a fingerprint of the base weights, versions.

Weights are read from safetensors only (no pickle); a legacy ``.bin`` is read with
``torch.load(weights_only=True)``. Every problem with a file (missing, truncated or corrupt, an
unknown method, tensors whose names or shapes do not fit the model, a base model other than the one
the adapter was trained on) is a one-line ``LsrAdaptError`` naming the file and the problem, raised
before the model is modified.

Task switching: ``load_adapter(model, path, name=...)`` keeps a copy of each adapter's tensors in a
bank on the model; ``set_active_adapter(model, name)`` copies that adapter's tensors (adapter + head)
into the live parameters in place (unmerging and re-merging a merged model around the copy), so
one base model in memory serves several tasks. Adapters with different hyperparameters or target
layers are swapped by rebuilding the adapter layers around the same base layers.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .adapters import adapter_layers, get_method
from .adapters.base import SUPPORTED_BASE_LAYERS
from .errors import LsrAdaptError
from .iofiles import atomic_path, write_json

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LEGACY_WEIGHTS = "adapter_model.bin"
FORMAT = "lsr-adapt"
FORMAT_VERSION = 1
FINGERPRINT_ALGORITHM = "sha256-strided-bf16-v1"
FINGERPRINT_SAMPLES = 1024  # values hashed per tensor
PROBE_SAMPLES = 4  # values kept in clear per tensor, to tell "other precision" from "other weights"
# Hyperparameters that change how an update is computed or regularised, never its value.
FUNCTION_NEUTRAL_OPTIONS = frozenset({"dropout", "path"})


# -- what an adapter file holds ------------------------------------------------------------------
def adapter_entry_names(model: nn.Module) -> set[str]:
    """State-dict names of every adapter layer's own tensors (not its wrapped base layer)."""
    names = set()
    for lname, layer in adapter_layers(model).items():
        names.update(f"{lname}.{k}" for k in layer.state_dict(keep_vars=True) if not k.startswith("base_layer."))
    return names


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: adapter tensors (trainable or frozen, e.g. with
    ``freeze_adapter``) and every other trainable parameter (the task head, or base parameters a
    method trains), detached copies on the CPU, keyed by state-dict name."""
    state = model.state_dict(keep_vars=True)
    names = adapter_entry_names(model)
    names.update(n for n, p in model.named_parameters() if p.requires_grad)
    return {n: state[n].detach().to("cpu").contiguous() for n in sorted(names)}


# -- base fingerprint ----------------------------------------------------------------------------
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


# -- saving --------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, out_dir, meta: dict) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into ``out_dir`` atomically.

    ``meta`` holds what the model does not know (``adaptation_type``, ``method_config``, base model
    id, ``num_labels``, task, ...); the tensor names, fingerprint and versions are added here.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = adapter_state(model)
    adapter_names = adapter_entry_names(model)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "target_modules": meta.get("target_modules") or sorted(adapter_layers(model)),
        "trained_head": sorted(n for n in tensors if n not in adapter_names),
        "base_fingerprint": base_fingerprint(model, exclude=tensors),
        "lsr_adapt_version": __version__,
        "torch_version": torch.__version__,
    }
    data = save(tensors, metadata={"format": "pt", "lsr_adapt": __version__})
    with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
        tmp.write_bytes(data)  # into the temp file atomic_path made, so it keeps ordinary permissions
    write_json(out_dir / ADAPTER_CONFIG, config)
    return out_dir


# -- reading -------------------------------------------------------------------------------------
def adapter_files(path) -> tuple[Path, Path]:
    """(config file, weights file) of an adapter directory, a run directory, or its weights file."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not p.exists():
        raise LsrAdaptError(f"{p}: no such adapter directory")
    cfg = p / ADAPTER_CONFIG
    if not cfg.is_file():
        raise LsrAdaptError(f"{cfg}: missing file (not an adapter or run directory)")
    weights = p / ADAPTER_WEIGHTS
    if not weights.is_file() and (p / LEGACY_WEIGHTS).is_file():
        weights = p / LEGACY_WEIGHTS
    if not weights.is_file():
        raise LsrAdaptError(f"{weights}: missing file (the adapter's weights)")
    return cfg, weights


def read_json(path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LsrAdaptError(f"{path}: missing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LsrAdaptError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(obj, dict):
        raise LsrAdaptError(f"{path}: corrupt adapter config (a JSON object was expected)")
    return obj


def read_weights(path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (or a legacy ``.bin``, unpickled with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise LsrAdaptError(f"{path}: missing file")
    if path.suffix == ".bin":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise LsrAdaptError(f"{path}: unreadable legacy weights file ({_one_line(e)})") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LsrAdaptError(f"{path}: legacy weights file is not a name -> tensor mapping")
        return obj
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise LsrAdaptError(f"{path}: truncated or corrupt safetensors file ({_one_line(e)})") from None
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise LsrAdaptError(f"{path}: tensor {bad[0]} holds NaN or infinite values")
    return tensors


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_adapter_config(path) -> dict:
    """The adapter config of a directory, checked for the keys lsr-adapt needs."""
    cfg_file, _ = adapter_files(path)
    cfg = read_json(cfg_file)
    if "peft_type" in cfg:
        return cfg
    if cfg.get("format", FORMAT) != FORMAT:
        raise LsrAdaptError(f"{cfg_file}: unknown adapter format {cfg.get('format')!r}; valid choices: {FORMAT}, peft")
    missing = [k for k in ("adaptation_type", "method_config", "target_modules") if k not in cfg]
    if missing:
        raise LsrAdaptError(f"{cfg_file}: corrupt adapter config, missing {', '.join(missing)}")
    return cfg


# -- the loaded artifact, and installing it --------------------------------------------------------
@dataclass
class Artifact:
    """One adapter in memory: how to build its layers, and its tensors under model state-dict names."""

    method: str
    config: Any  # the method's config dataclass
    targets: tuple[str, ...]
    tensors: dict[str, torch.Tensor]
    source: str  # the weights file, for messages
    meta: dict = field(default_factory=dict)

    def same_layers(self, other: Artifact | None) -> bool:
        return (other is not None and self.method == other.method and self.targets == other.targets
                and _config_dict(self.config) == _config_dict(other.config))


def _config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})


def artifact_from_dir(path) -> Artifact:
    cfg_file, weights_file = adapter_files(path)
    cfg = read_adapter_config(path)
    if "peft_type" in cfg:
        from .peft_format import artifact_from_peft

        return artifact_from_peft(cfg, cfg_file, weights_file)
    try:
        method = get_method(str(cfg["adaptation_type"]))
    except LsrAdaptError as e:
        raise LsrAdaptError(f"{cfg_file}: {e}") from None
    try:
        method_cfg = method.make_config(cfg["method_config"])
    except LsrAdaptError as e:
        raise LsrAdaptError(f"{cfg_file}: {e}") from None
    targets = tuple(str(t) for t in cfg["target_modules"]) if method.make_layer is not None else ()
    return Artifact(method.name, method_cfg, targets, read_weights(weights_file), str(weights_file), cfg)


def _bank(model: nn.Module) -> dict[str, Artifact]:
    if not hasattr(model, "_lsr_adapters"):
        model._lsr_adapters = {}
        model._lsr_active = None
    return model._lsr_adapters


def _build_layers(model: nn.Module, art: Artifact) -> dict[str, nn.Module]:
    """New adapter layers for ``art`` around the model's base layers (the model is not modified)."""
    method = get_method(art.method)
    current = adapter_layers(model)
    modules = dict(model.named_modules())
    layers = {}
    for name in art.targets:
        mod = current[name].base_layer if name in current else modules.get(name)
        if not isinstance(mod, SUPPORTED_BASE_LAYERS):
            raise LsrAdaptError(f"{art.source}: the adapter adapts layer {name}, which this model "
                                f"{'lacks' if mod is None else 'has as a ' + type(mod).__name__}")
        try:
            layers[name] = method.make_layer(mod, art.config, name)
        except LsrAdaptError as e:
            raise LsrAdaptError(f"{art.source}: {e}") from None
    return layers


def _check_tensors(model: nn.Module, art: Artifact, new_layers: dict[str, nn.Module] | None) -> dict:
    """Model tensors the artifact's tensors go into, checked for names and shapes; raises on a mismatch."""
    state = dict(model.state_dict(keep_vars=True))
    if new_layers is not None:  # the layers that will be installed replace the current ones
        wrapped = tuple(f"{n}." for n in adapter_layers(model))
        state = {k: v for k, v in state.items() if not k.startswith(wrapped) or ".base_layer." in k}
        for lname, layer in new_layers.items():
            state.update({f"{lname}.{k}": v for k, v in layer.state_dict(keep_vars=True).items()
                          if not k.startswith("base_layer.")})
        expected_adapter = {f"{ln}.{k}" for ln, layer in new_layers.items()
                            for k in layer.state_dict() if not k.startswith("base_layer.")}
    else:
        expected_adapter = adapter_entry_names(model)
    unknown = sorted(n for n in art.tensors if n not in state)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise LsrAdaptError(f"{art.source}: tensor {unknown[0]}{more} has no place in this model "
                            f"(saved from another architecture or method?)")
    missing = sorted(expected_adapter - set(art.tensors))
    if missing:
        raise LsrAdaptError(f"{art.source}: adapter tensor {missing[0]} is missing from the file "
                            f"({len(missing)} missing in all)")
    for n, t in sorted(art.tensors.items()):
        if tuple(state[n].shape) != tuple(t.shape):
            raise LsrAdaptError(f"{art.source}: shape mismatch for {n}: file {list(t.shape)}, "
                                f"model {list(state[n].shape)}")
    return {n: state[n] for n in art.tensors}


def _prepare_switch(model: nn.Module, art: Artifact, rebuild: bool) -> tuple[dict | None, bool]:
    """(new layers or None, whether the model was merged), with ``art`` checked against the model.

    New layers wrap the base layers in their original (unmerged) state; if the check fails, a
    merged model is merged again, so it is left as it was.
    """
    layers = adapter_layers(model)
    was_merged = any(layer.merged for layer in layers.values())
    if rebuild and was_merged:
        for layer in layers.values():
            layer.unmerge()
    try:
        new_layers = _build_layers(model, art) if rebuild else None
        _check_tensors(model, art, new_layers)
    except BaseException:
        if rebuild and was_merged:
            for layer in layers.values():
                layer.merge()
        raise
    return new_layers, was_merged


def _install(model: nn.Module, art: Artifact, new_layers: dict[str, nn.Module] | None, remerge: bool) -> None:
    """Put ``art``'s layers (when rebuilt) and tensors into the model; nothing here can fail on input."""
    from .adapters import replace_modules

    layers = adapter_layers(model)
    for layer in layers.values():
        layer.unmerge()
    if new_layers is not None:
        # a rebuilt layer's parameters train as the ones they replace did (frozen ones stay frozen)
        trainable = {f"{ln}.{pn}": p.requires_grad for ln, layer in layers.items()
                     for pn, p in layer.adapter_parameters().items()}
        for name in layers:  # back to the plain base layer where the new adapter does not go
            if name not in new_layers:
                replace_modules(model, [name], lambda m, _n: m.base_layer)
        for name, layer in new_layers.items():
            for pn, p in layer.adapter_parameters().items():
                p.requires_grad_(trainable.get(f"{name}.{pn}", pn not in getattr(layer, "frozen_params", ())))
            replace_modules(model, [name], lambda _m, n: new_layers[n])
        method = get_method(art.method)
        if method.prepare is not None and not layers:  # as apply_adapter does, once, on the plain model
            method.prepare(model, art.config)
    state = model.state_dict(keep_vars=True)  # names and shapes were checked when the adapter was added
    targets = {n: state[n] for n in art.tensors}
    with torch.no_grad():
        for n, t in art.tensors.items():
            targets[n].copy_(t)
    if remerge:
        for layer in adapter_layers(model).values():
            layer.merge()


def load_adapter(model: nn.Module, path, name: str = "default", *, check_fingerprint: bool = True,
                 head: bool = True, rebuild: bool | None = None) -> dict:
    """Load an adapter directory (lsr-adapt or peft LoRA format) into ``model`` and make it active.

    The model may be plain (it is wrapped with the adapter's method), already wrapped (its adapter
    layers are rebuilt from the saved hyperparameters unless they are the same), or hold other
    named adapters (this one joins them; ``set_active_adapter`` switches). ``head=False`` leaves
    the task head as it is (continuing on a task with another label set); ``rebuild=False`` loads
    into the model's current adapter layers (their config must be the saved one). Returns the
    adapter config.
    """
    art = artifact_from_dir(path)
    fp = art.meta.get("base_fingerprint")
    if check_fingerprint and fp:
        problem = fingerprint_problem(model, fp, exclude=set(art.tensors))
        if problem:
            raise LsrAdaptError(f"{art.source}: {problem} (base_model {art.meta.get('base_model')!r}; "
                                f"pass check_fingerprint=False / --no-fingerprint-check to load anyway)")
    if not head:  # the adapter layers' own tensors only
        prefixes = tuple(f"{t}." for t in art.targets)
        art.tensors = {n: t for n, t in art.tensors.items() if n.startswith(prefixes)}
    add_adapter(model, name, art, rebuild=rebuild)
    return art.meta


def add_adapter(model: nn.Module, name: str, art: Artifact, rebuild: bool | None = None) -> None:
    """Register ``art`` under ``name`` (checked against the model first) and make it the active one.

    ``rebuild``: build the adapter layers from ``art``'s config (default: unless the active adapter
    has the same method, config and layers); False loads into the model's current adapter layers.
    """
    bank = _bank(model)
    if rebuild is None:
        rebuild = not art.same_layers(bank.get(model._lsr_active))
    new_layers, was_merged = _prepare_switch(model, art, rebuild)
    device = next(model.parameters()).device
    art.tensors = {n: t.to(device) for n, t in art.tensors.items()}
    _install(model, art, new_layers, was_merged)
    bank[name] = art
    model._lsr_active = name


def set_active_adapter(model: nn.Module, name: str) -> None:
    """Make the named adapter (loaded with ``load_adapter(..., name=)``) the active one, in place."""
    bank = _bank(model)
    if name not in bank:
        raise LsrAdaptError(f"no adapter named {name!r} is loaded; valid choices: {', '.join(sorted(bank)) or '(none)'}")
    if model._lsr_active == name:
        return
    art = bank[name]
    new_layers, was_merged = _prepare_switch(model, art, not art.same_layers(bank.get(model._lsr_active)))
    _install(model, art, new_layers, was_merged)
    model._lsr_active = name


def active_adapter(model: nn.Module) -> str | None:
    return getattr(model, "_lsr_active", None)


def list_adapters(model: nn.Module) -> list[str]:
    return sorted(getattr(model, "_lsr_adapters", {}))


def freeze_adapter(model: nn.Module) -> int:
    """Stop the adapter training (the head still trains); returns how many parameters were frozen."""
    n = 0
    for layer in adapter_layers(model).values():
        for p in layer.adapter_parameters().values():
            if p.requires_grad:
                p.requires_grad_(False)
                n += p.numel()
    return n


# -- continuing a run ------------------------------------------------------------------------------
def check_compatible(saved: dict, adaptation_type: str, method_config, source: str) -> None:
    """A run configured as (``adaptation_type``, ``method_config``) can start from the saved adapter."""
    saved_type = saved.get("adaptation_type", "lora (peft)" if "peft_type" in saved else None)
    if saved_type != adaptation_type:
        raise LsrAdaptError(f"{source}: the saved adapter is {saved_type!r} but this run configures "
                            f"model.adaptation_type={adaptation_type!r}; set it to {saved_type!r}")
    mine = _config_dict(method_config)
    theirs = get_method(adaptation_type).make_config(saved.get("method_config") or {})
    theirs = _config_dict(theirs)
    diff = [f"{k}: saved {theirs.get(k)!r}, configured {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
            if k not in FUNCTION_NEUTRAL_OPTIONS and mine.get(k) != theirs.get(k)]
    if diff:
        raise LsrAdaptError(f"{source}: the saved {adaptation_type} adapter differs from this run's "
                            f"model.{adaptation_type} ({'; '.join(diff)}); set them as saved")


def init_from_run(model: nn.Module, run_dir, adaptation_type: str, method_config, num_labels: int) -> dict:
    """Start a run from a saved adapter (and head, when the label count is the same)."""
    cfg_file, _ = adapter_files(run_dir)
    saved = read_adapter_config(run_dir)
    if "peft_type" in saved:
        raise LsrAdaptError(f"{cfg_file}: init_from takes an lsr-adapt run or adapter directory, not a peft one")
    check_compatible(saved, adaptation_type, method_config, str(cfg_file))
    mine, theirs = sorted(adapter_layers(model)), sorted(saved.get("target_modules") or [])
    if mine != theirs:
        only = sorted(set(theirs) ^ set(mine))
        raise LsrAdaptError(f"{cfg_file}: the saved adapter adapts {len(theirs)} layers, this run {len(mine)} "
                            f"(differing: {only[0]}{' ...' if len(only) > 1 else ''}); set model.target_modules as saved")
    same_head = int(saved.get("num_labels", num_labels)) == int(num_labels)
    if not same_head:
        log.info("init_from %s: saved for %s labels, this run has %s: the head starts fresh",
                 run_dir, saved.get("num_labels"), num_labels)
    meta = load_adapter(model, run_dir, head=same_head, rebuild=False)  # config checked just above
    _bank(model).clear()  # training owns the tensors from here on
    model._lsr_active = None
    return {"path": str(run_dir), "head_loaded": same_head, "task": meta.get("task")}


# -- a saved run, ready to predict ------------------------------------------------------------------
@dataclass
class LoadedRun:
    model: nn.Module
    tokenizer: Any
    adapter_config: dict
    run_config: Any  # the run's config_resolved.yaml (OmegaConf), or None for a bare adapter dir
    path: Path

    @property
    def num_labels(self) -> int:
        return int(self.adapter_config.get("num_labels") or self.model.config.num_labels)

    @property
    def label_names(self) -> list[str]:
        names = self.adapter_config.get("label_names")
        if not names and self.run_config is not None:
            names = self.run_config.get("data", {}).get("label_names")
        names = [str(n) for n in names] if names else [str(i) for i in range(self.num_labels)]
        return names if len(names) == self.num_labels else [str(i) for i in range(self.num_labels)]


def run_config_of(run_dir) -> Any:
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - a YAML syntax error of any kind
        raise LsrAdaptError(f"{path}: corrupt run config ({_one_line(e)})") from None


def base_path_of(adapter_config: dict, run_config=None) -> str:
    """Where to load the base model from: the path used in training if it still exists, else the id."""
    loaded_from = adapter_config.get("loaded_from")
    if loaded_from and Path(loaded_from).exists():
        return str(loaded_from)
    if run_config is not None and run_config.get("model", {}).get("tiny"):
        from .train import model_path_of

        return model_path_of(run_config.model)
    base = adapter_config.get("base_model") or adapter_config.get("base_model_name_or_path")
    if not base:
        raise LsrAdaptError("the adapter config names no base model; pass base=... (--base)")
    return str(base)


def saved_run(run_dir, base: str | None = None) -> tuple[Path, dict, object, str]:
    """(run dir, adapter config, run config, base model path) of an lsr-adapt run directory; a peft
    adapter directory is an error (it has no run to rebuild: load its base, then ``load_adapter``)."""
    run_dir = Path(run_dir)
    adapter_files(run_dir)
    adapter_config = read_adapter_config(run_dir)
    if "peft_type" in adapter_config:
        raise LsrAdaptError(f"{run_dir}: a peft adapter directory; load its base model and call "
                            f"load_adapter(model, {str(run_dir)!r})")
    run_config = run_config_of(run_dir)
    return run_dir, adapter_config, run_config, base or base_path_of(adapter_config, run_config)


def load_run(run_dir, *, base: str | None = None, check_fingerprint: bool = True,
             device: str | None = None) -> LoadedRun:
    """Rebuild a saved run for inference: base model + tokenizer + adapter + head, eval mode, frozen."""
    from .modeling import load_classifier

    run_dir, adapter_config, run_config, base = saved_run(run_dir, base)
    num_labels = int(adapter_config.get("num_labels") or 2)
    loaded = load_classifier(base, num_labels)
    model = loaded.model.to(device) if device else loaded.model  # before loading: the bank lives there too
    load_adapter(model, run_dir, check_fingerprint=check_fingerprint)
    labels = adapter_config.get("label_names") or (run_config.get("data", {}).get("label_names")
                                                   if run_config is not None else None)
    if labels and len(labels) == num_labels:
        model.config.id2label = {i: str(n) for i, n in enumerate(labels)}
        model.config.label2id = {str(n): i for i, n in enumerate(labels)}
    model.requires_grad_(False)
    model.eval()
    return LoadedRun(model, loaded.tokenizer, adapter_config, run_config, run_dir)


def add_run_loading_args(parser, device: bool = True) -> None:
    """The options every command that rebuilds a saved run takes (predict, generate, export)."""
    parser.add_argument("--base", help="base model path/id, if not where the run loaded it from")
    if device:
        parser.add_argument("--device", help="e.g. cuda; default cpu")
    parser.add_argument("--no-fingerprint-check", action="store_true", help="load even if the base weights differ")


def quiet_hf() -> None:
    """For command-line tools: no progress bars or load reports from transformers / datasets on the
    terminal, so stdout is the answer and stderr, on bad input, the one ``error:`` line (the copy
    ``cli.exit_on_user_error`` logs to the "lsr_adapt" logger is for log files, not the terminal)."""
    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.name != "lsr_adapt")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
