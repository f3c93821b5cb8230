"""Wrap a model's existing Linear / Conv1D modules by name; the model's own code is never touched."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import LsrAdaptError
from .base import SUPPORTED_BASE_LAYERS, AdapterLayer

# The one source of default target layers per architecture (model.config.model_type): the LoRA
# paper's q,v for encoders and decoders; all three attention inputs for DistilBERT and Whisper, as
# the IMDB and gravitational-wave experiments were measured. conf/backbone/*.yaml leave
# target_modules null to use these; set it to override.
DEFAULT_TARGET_MODULES = {
    "roberta": ["query", "value"],
    "bert": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "whisper": ["q_proj", "k_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}
ALL_LINEAR = "all-linear"


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def adapter_entry_names(model: nn.Module) -> set[str]:
    """State-dict names of every adapter layer's own tensors (not its wrapped base layer)."""
    names = set()
    for lname, layer in adapter_layers(model).items():
        names.update(f"{lname}.{k}" for k in layer.state_dict(keep_vars=True) if not k.startswith("base_layer."))
    return names


def _candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Supported layers that are not already inside an adapter."""
    wrapped = tuple(f"{n}." for n in adapter_layers(model))
    return {
        name: m for name, m in model.named_modules()
        if isinstance(m, SUPPORTED_BASE_LAYERS) and not name.startswith(wrapped) and name
    }


def resolve_target_modules(model: nn.Module, target_modules, exclude: Iterable[str] = ()) -> list[str]:
    """Full module names selected by ``target_modules``.

    A list selects every layer whose name equals an entry or ends with ``.<entry>``; a string is a
    full-match regex; ``"all-linear"`` selects every Linear/Conv1D except those under ``exclude``
    (the task head). None uses the architecture's default (``DEFAULT_TARGET_MODULES``).
    """
    layers = _candidate_layers(model)
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGET_MODULES:
            raise LsrAdaptError(
                f"no default target_modules for model type {model_type!r}; set model.target_modules "
                f"(e.g. {ALL_LINEAR!r}) from the model's Linear layers: {_short_names(layers)}"
            )
        target_modules = DEFAULT_TARGET_MODULES[model_type]
    excl = tuple(exclude)
    if target_modules == ALL_LINEAR:
        names = [n for n in layers if not any(n == e or n.startswith(e + ".") for e in excl)]
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        names = [n for n in layers if pattern.fullmatch(n)]
    else:
        wanted = [str(t) for t in target_modules]
        names = [n for n in layers if any(n == t or n.endswith("." + t) for t in wanted)]
    if not names:
        raise LsrAdaptError(
            f"target_modules {target_modules!r} matched no Linear layer; the model's Linear layers are: "
            f"{_short_names(layers)} (or use {ALL_LINEAR!r})"
        )
    return names


def _short_names(layers) -> str:
    seen = dict.fromkeys(n.rsplit(".", 1)[-1] for n in layers)
    return ", ".join(seen)


def replace_modules(model: nn.Module, names: Iterable[str],
                    make_layer: Callable[[nn.Module, str], nn.Module]) -> nn.Module:
    """Swap each named module for ``make_layer(module, name)`` in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make_layer(getattr(parent, child), name))
    return model


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for layer in adapter_layers(model).values():
        layer.enable_adapter(enabled)


def merge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain base layers back: a model with no lsr-adapt code in it."""
    for name, layer in list(adapter_layers(model).items()):
        layer.merge()
        layer._unmerged_weight = None
        replace_modules(model, [name], lambda m, _n: m.base_layer)
    return model
