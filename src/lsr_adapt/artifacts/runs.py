"""Saved runs: rebuild one for inference (as the model class it was trained as), or start a run from one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..adapters import adapter_layers, get_method
from ..errors import LsrAdaptError, first_line
from ..outpaths import RUN_CONFIG
from ..sources import model_path_of
from ..tasks import get_task
from .bank import load_adapter
from .format import FUNCTION_NEUTRAL_OPTIONS, adapter_files, config_dict, is_peft_config, read_adapter_config

log = logging.getLogger(__name__)


# -- continuing a run ------------------------------------------------------------------------------
def check_compatible(saved: dict, adaptation_type: str, method_config, source: str) -> None:
    """A run configured as (``adaptation_type``, ``method_config``) can start from the saved adapter."""
    saved_type = saved.get("adaptation_type", "lora (peft)" if is_peft_config(saved) else None)
    if saved_type != adaptation_type:
        raise LsrAdaptError(f"{source}: the saved adapter is {saved_type!r} but this run configures "
                            f"model.adaptation_type={adaptation_type!r}; set it to {saved_type!r}")
    mine = config_dict(method_config)
    theirs = config_dict(get_method(adaptation_type).make_config(saved.get("method_config") or {}))
    diff = [f"{k}: saved {theirs.get(k)!r}, configured {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
            if k not in FUNCTION_NEUTRAL_OPTIONS and mine.get(k) != theirs.get(k)]
    if diff:
        raise LsrAdaptError(f"{source}: the saved {adaptation_type} adapter differs from this run's "
                            f"model.{adaptation_type} ({'; '.join(diff)}); set them as saved")


def init_from_run(model: nn.Module, run_dir, adaptation_type: str, method_config, num_labels: int,
                  check_checksum: bool = True) -> dict:
    """Start a run from a saved adapter (and head, when the label count is the same)."""
    cfg_file, _ = adapter_files(run_dir)
    saved = read_adapter_config(run_dir)
    if is_peft_config(saved):
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
    meta = load_adapter(model, run_dir, head=same_head, rebuild=False,  # config checked just above
                        check_checksum=check_checksum)
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
    def task_type(self) -> str:
        return str(self.adapter_config.get("task_type") or "classification")

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

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - a YAML syntax error of any kind
        raise LsrAdaptError(f"{path}: corrupt run config ({first_line(e)})") from None


def base_path_of(adapter_config: dict, run_config=None) -> str:
    """Where to load the base model from: the path used in training if it still exists, else the id."""
    loaded_from = adapter_config.get("loaded_from")
    if loaded_from and Path(loaded_from).exists():
        return str(loaded_from)
    if run_config is not None and run_config.get("model", {}).get("tiny"):
        return model_path_of(run_config.model)
    base = adapter_config.get("base_model") or adapter_config.get("base_model_name_or_path")
    if not base:
        raise LsrAdaptError("the adapter config names no base model; pass base=... (--base)")
    return str(base)


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative with ./ or ~, or 3+ segments."""
    return name.startswith(("/", ".", "~")) or name.count("/") >= 2 or "\\" in name


def moved_base(adapter_config: dict) -> str | None:
    """The local base model dir the run was trained from, when it no longer exists (else None)."""
    loaded_from = adapter_config.get("loaded_from")
    if loaded_from and _looks_local(str(loaded_from)) and not Path(loaded_from).exists():
        return str(loaded_from)
    return None


def _moved_base_error(run_dir, loaded_from: str, tried: str | None, why: str | None) -> LsrAdaptError:
    instead = f"; {tried!r} in its place does not load ({why})" if tried else ""
    return LsrAdaptError(f"{run_dir}: its base model dir {loaded_from} no longer exists; pass --base "
                         f"/new/path/of/that/model (or base=... in Python){instead}")


def saved_run(run_dir, base: str | None = None) -> tuple[Path, dict, object, str]:
    """(run dir, adapter config, run config, base model path) of an lsr-adapt run directory; a peft
    adapter directory is an error (it has no run to rebuild: load its base, then ``load_adapter``)."""
    if base is not None and _looks_local(str(base)) and not Path(base).expanduser().exists():
        raise LsrAdaptError(f"--base {base}: no such directory; give the base model's dir or hub id")
    run_dir = Path(run_dir)
    adapter_files(run_dir)
    adapter_config = read_adapter_config(run_dir)
    if is_peft_config(adapter_config):
        raise LsrAdaptError(f"{run_dir}: a peft adapter directory; load its base model and call "
                            f"load_adapter(model, {str(run_dir)!r})")
    run_config = run_config_of(run_dir)
    return run_dir, adapter_config, run_config, base or base_path_of(adapter_config, run_config)


def _model_configs(adapter_config: dict, run_config) -> tuple[Any, Any]:
    """(data config, model config) that rebuild the run's model class: the run's own when it has them,
    else what the adapter config records (task type, label count)."""
    from omegaconf import OmegaConf

    if run_config is not None and "data" in run_config and "model" in run_config:
        data_cfg, model_cfg = run_config.data, run_config.model
    else:  # a bare adapter dir
        data_cfg, model_cfg = OmegaConf.create({}), OmegaConf.create({"pooling": adapter_config.get("pooling")})
    num_labels = adapter_config.get("num_labels")  # 0: no task head (causal LM)
    # rebuilding the model needs no token limit (predict checks the one it tokenizes with)
    data_cfg = OmegaConf.merge(data_cfg, {"max_length": None}) if "max_length" in data_cfg else data_cfg
    return (OmegaConf.merge(data_cfg, {"task_type": adapter_config.get("task_type") or "classification",
                                       "num_labels": 2 if num_labels is None else int(num_labels)}),
            model_cfg)


def _check_device(device: str) -> None:
    """A device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), before any model loads."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise LsrAdaptError(f"--device {device!r}: not a device name; e.g. cpu, cuda, cuda:0, mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(dev.type, False):
        have = ", ".join(k for k, v in available.items() if v)
        raise LsrAdaptError(f"--device {device!r}: this machine has no {dev.type} device; available: {have}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LsrAdaptError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA devices")


def load_run(run_dir, *, base: str | None = None, check_fingerprint: bool = True, check_checksum: bool = True,
             device: str | None = None, adapter: bool = True) -> LoadedRun:
    """Rebuild a saved run for inference: base model of the class it was trained as (sequence
    classifier, causal LM, GW detector) + tokenizer + adapter + head, eval mode, frozen.
    ``adapter=False`` gives the base model alone (for comparison)."""
    if device:
        _check_device(device)
    given = base
    run_dir, adapter_config, run_config, base = saved_run(run_dir, base)
    data_cfg, model_cfg = _model_configs(adapter_config, run_config)
    moved = None if given is not None else moved_base(adapter_config)
    if moved and _looks_local(base) and not Path(base).exists():  # nothing else to try: say so at once
        raise _moved_base_error(run_dir, moved, None, None)
    try:
        loaded = get_task(data_cfg).load(base, data_cfg, model_cfg)
    except LsrAdaptError as e:
        if moved:  # the recorded hub id did not load either (e.g. offline): the dir and --base are the fix
            raise _moved_base_error(run_dir, moved, base, str(e)[:200]) from None
        raise
    model = loaded.model.to(device) if device else loaded.model
    if adapter:
        load_adapter(model, run_dir, check_fingerprint=check_fingerprint, check_checksum=check_checksum)
    labels = adapter_config.get("label_names") or (run_config.get("data", {}).get("label_names")
                                                   if run_config is not None else None)
    num_labels = int(adapter_config.get("num_labels") or 0)
    if labels and len(labels) == num_labels:
        model.config.id2label = {i: str(n) for i, n in enumerate(labels)}
        model.config.label2id = {str(n): i for i, n in enumerate(labels)}
    model.requires_grad_(False)
    model.eval()
    return LoadedRun(model, loaded.tokenizer, adapter_config, run_config, run_dir)
