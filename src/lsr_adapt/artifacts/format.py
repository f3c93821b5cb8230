"""The adapter file format: what a directory holds, writing it atomically, reading it with checks.

An adapter directory (every run directory is one) holds the same two file names peft uses:

* ``adapter_model.safetensors``: the adapter tensors (parameters and persistent buffers of every
  adapter layer) and every other trainable tensor (the task head);
* ``adapter_config.json``.

Two layouts:

* **peft** (written for adapters with an exact peft LoRA form: LoRA, rsLoRA, DoRA and the LoRA
  variants whose ΔW is s·BA, when the head is whole modules; ``peft_format.save_run_adapter``):
  ``adapter_config.json`` is peft's own LoRA config and the tensors carry peft's names
  (``base_model.model.<layer>.lora_A.weight``, ``...lora_magnitude_vector``, the head under
  ``base_model.model.<name>``), so ``PeftModel.from_pretrained(base, dir)`` opens the directory;
  lsr-adapt's own record sits beside it in ``lsr_adapt_config.json`` (a third file, because peft
  warns about every key of its config it does not know, and both formats use ``task_type``).
* **lsr-adapt** (every other adapter, and every directory saved before the peft layout): the
  tensors under their names in the model, and lsr-adapt's record in ``adapter_config.json``.

lsr-adapt's record: ``format: lsr-adapt``, method (``adaptation_type``) and its hyperparameters,
the adapted layers, the head tensor names, base model id and the path it was loaded from,
``num_labels``, task, label names, a fingerprint of the base weights, versions, ``tensor_names``
(``peft`` in the peft layout) and ``weights_sha256``: the checksum of the weights file, verified
on every load.

Weights are read from safetensors only (no pickle); a legacy ``.bin`` is read with
``torch.load(weights_only=True)``. Every problem with a file is a one-line ``LsrAdaptError`` naming
the file and the problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..adapters import adapter_entry_names, adapter_layers
from ..errors import LsrAdaptError, first_line
from ..iofiles import atomic_path, write_json
from ..outpaths import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LEGACY_WEIGHTS, LSR_ADAPT_CONFIG, RUN_CONFIG
from .fingerprint import base_fingerprint

log = logging.getLogger(__name__)

FORMAT = "lsr-adapt"
FORMAT_VERSION = 1
CHECKSUM_KEY = "weights_sha256"
# peft's names of a LoRA layer's tensors (after the model's module name), and of the model's root
PEFT_PREFIX = "base_model.model."
PEFT_SUFFIXES = {".lora_A": ".lora_A.weight", ".lora_B": ".lora_B.weight", ".lora_magnitude": ".lora_magnitude_vector"}
# Hyperparameters that change how an update is computed or regularised, never its value.
FUNCTION_NEUTRAL_OPTIONS = frozenset({"dropout", "path"})


# -- what an adapter file holds ------------------------------------------------------------------
def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: adapter tensors (trainable or frozen, e.g. with
    ``freeze_adapter``) and every other trainable parameter (the task head, or base parameters a
    method trains), detached copies on the CPU, keyed by state-dict name."""
    state = model.state_dict(keep_vars=True)
    names = adapter_entry_names(model)
    names.update(n for n, p in model.named_parameters() if p.requires_grad)
    return {n: state[n].detach().to("cpu").contiguous() for n in sorted(names)}


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def to_peft_name(name: str, adapter_names) -> str:
    """peft's name of the model tensor ``name`` (an adapter layer's entry or a head tensor)."""
    if name in adapter_names:
        for ours, peft in PEFT_SUFFIXES.items():
            if name.endswith(ours):
                return PEFT_PREFIX + name[: -len(ours)] + peft
    return PEFT_PREFIX + name


def from_peft_name(key: str) -> str:
    """The model's name of a tensor stored under its peft name (the inverse of ``to_peft_name``)."""
    name = key.removeprefix(PEFT_PREFIX)
    for ours, peft in PEFT_SUFFIXES.items():
        if name.endswith(peft):
            return name[: -len(peft)] + ours
    return name


def save_adapter(model: nn.Module, out_dir, meta: dict, peft_config: dict | None = None) -> Path:
    """Write the adapter's files into ``out_dir``, each atomically.

    ``meta`` holds what the model does not know (``adaptation_type``, ``method_config``, base model
    id, ``num_labels``, task, ...); the tensor names, fingerprint, checksum and versions are added
    here. With ``peft_config`` (peft's LoRA config of exactly these tensors, from
    ``peft_format.run_peft_config``) the directory gets the peft layout (module doc), otherwise
    lsr-adapt's. Non-finite weights are never saved: an adapter full of NaN/inf is an error, not a file.
    """
    from safetensors.torch import save

    out_dir = Path(out_dir)
    tensors = adapter_state(model)
    bad = nonfinite_tensors(tensors)
    if bad:
        raise LsrAdaptError(f"refusing to save an adapter whose tensor {bad[0]} holds NaN or infinite values "
                            f"({len(bad)} such tensors); the training diverged")
    adapter_names = adapter_entry_names(model)
    stored = {to_peft_name(n, adapter_names): t for n, t in tensors.items()} if peft_config else tensors
    if peft_config and sorted(from_peft_name(k) for k in stored) != sorted(tensors):
        raise LsrAdaptError("these adapter tensors have no one-to-one peft names; save without peft_config")
    data = save(stored, metadata={"format": "pt", "lsr_adapt": __version__})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "target_modules": meta.get("target_modules") or sorted(adapter_layers(model)),
        "trained_head": sorted(n for n in tensors if n not in adapter_names),
        "base_fingerprint": base_fingerprint(model, exclude=tensors),
        "tensor_names": "peft" if peft_config else "model",
        CHECKSUM_KEY: hashlib.sha256(data).hexdigest(),
        "lsr_adapt_version": __version__,
        "torch_version": torch.__version__,
    }
    if not peft_config:
        # a record of an earlier peft-layout save here would shadow this one (read_adapter_config)
        (out_dir / LSR_ADAPT_CONFIG).unlink(missing_ok=True)
    with atomic_path(out_dir / ADAPTER_WEIGHTS) as tmp:
        tmp.write_bytes(data)  # into the temp file atomic_path made, so it keeps ordinary permissions
    if peft_config:
        write_json(out_dir / LSR_ADAPT_CONFIG, config)  # before peft's: a config alone reads as a plain peft dir
        write_json(out_dir / ADAPTER_CONFIG, peft_config)
    else:
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
        if (p / RUN_CONFIG).is_file():  # a run directory whose run has not finished
            raise LsrAdaptError(f"{p}: the run has not finished (no {ADAPTER_CONFIG} yet); wait for it, resume "
                                f"it by re-running its command, or pass a finished run")
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


def read_weights(path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (or a legacy ``.bin``, unpickled with ``weights_only=True``);
    with ``sha256``, the file's bytes must have that checksum."""
    path = Path(path)
    if not path.is_file():
        raise LsrAdaptError(f"{path}: missing file")
    data = path.read_bytes()
    if path.suffix == ".bin":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise LsrAdaptError(f"{path}: unreadable legacy weights file ({first_line(e)})") from None
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise LsrAdaptError(f"{path}: legacy weights file is not a name -> tensor mapping")
        _check_sum(path, data, sha256)
        return obj
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise LsrAdaptError(f"{path}: truncated or corrupt safetensors file ({first_line(e)})") from None
    _check_sum(path, data, sha256)  # after parsing: a truncated file says so; a flipped byte that parses, here
    bad = nonfinite_tensors(tensors)
    if bad:
        raise LsrAdaptError(f"{path}: tensor {bad[0]} holds NaN or infinite values")
    return tensors


def _check_sum(path: Path, data: bytes, sha256: str | None) -> None:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise LsrAdaptError(f"{path}: the file does not match the checksum recorded when it was saved (damaged or "
                            f"edited); if it was edited on purpose, load it with check_checksum=False / "
                            f"--no-checksum-check")


def is_peft_config(cfg: dict) -> bool:
    """An adapter config that peft wrote (or lsr-adapt wrote in peft's layout): it has ``peft_type``."""
    return "peft_type" in cfg


def read_adapter_config(path) -> dict:
    """The adapter config of a directory, checked for the keys lsr-adapt needs: lsr-adapt's record
    (``lsr_adapt_config.json`` in the peft layout, ``adapter_config.json`` otherwise), or the
    ``adapter_config.json`` of a directory peft wrote (it has ``peft_type``)."""
    cfg_file, _ = adapter_files(path)
    if (cfg_file.parent / LSR_ADAPT_CONFIG).is_file():
        cfg_file = cfg_file.parent / LSR_ADAPT_CONFIG
    cfg = read_json(cfg_file)
    if is_peft_config(cfg) and cfg_file.name == ADAPTER_CONFIG:
        return cfg
    if cfg.get("format", FORMAT) != FORMAT:
        raise LsrAdaptError(f"{cfg_file}: unknown adapter format {cfg.get('format')!r}; valid choices: {FORMAT}, peft")
    missing = [k for k in ("adaptation_type", "method_config", "target_modules") if k not in cfg]
    if missing:
        raise LsrAdaptError(f"{cfg_file}: corrupt adapter config, missing {', '.join(missing)}")
    return cfg


def read_adapter_weights(path, cfg: dict, check_checksum: bool = True) -> dict[str, torch.Tensor]:
    """The weights of an adapter directory, verified against the checksum its config recorded."""
    _, weights_file = adapter_files(path)
    # the checksum is of the safetensors file save_adapter wrote; a legacy .bin predates checksums
    expected = cfg.get(CHECKSUM_KEY) if check_checksum and weights_file.name == ADAPTER_WEIGHTS else None
    if check_checksum and expected is None and not is_peft_config(cfg):
        log.warning("%s records no checksum (saved by an older lsr-adapt): its integrity is not verified",
                    weights_file)
    tensors = read_weights(weights_file, sha256=expected)
    if cfg.get("tensor_names") == "peft":  # the peft layout: back to the model's names
        tensors = {from_peft_name(k): t for k, t in tensors.items()}
    return tensors


def adapter_tensors(path, check_checksum: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory under their names in the model, whatever its layout."""
    return read_adapter_weights(path, read_adapter_config(path), check_checksum)


# -- an adapter in memory ----------------------------------------------------------------------------
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
                and config_dict(self.config) == config_dict(other.config))


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
