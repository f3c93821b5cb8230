"""Loading adapters into a model, and a bank of several adapters that serve one base model.

``load_adapter(model, path)`` puts one saved adapter (lsr-adapt or peft LoRA format) into a model:
its file is checked (checksum, base fingerprint, tensor names and shapes) before the model is
touched, so a failed load leaves the model as it was.

``AdapterBank(model)`` is an object the caller holds: ``bank.load(path, name)`` keeps a copy of
each adapter's tensors, ``bank.activate(name)`` copies that adapter's tensors (adapter + head) into
the live parameters in place (unmerging and re-merging a merged model around the copy), so one base
model in memory serves several tasks. Adapters with different hyperparameters or target layers are
swapped by rebuilding the adapter layers around the same base layers. Nothing is stored on the model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_entry_names, adapter_layers, get_method, replace_modules
from ..adapters.base import SUPPORTED_BASE_LAYERS
from ..errors import LsrAdaptError
from .fingerprint import fingerprint_problem
from .format import Artifact, adapter_files, is_peft_config, read_adapter_config, read_adapter_weights
from .peft_format import artifact_from_peft


def artifact_from_dir(path, check_checksum: bool = True) -> Artifact:
    """An adapter directory (lsr-adapt or peft LoRA format) read into memory, checked for integrity."""
    cfg_file, weights_file = adapter_files(path)
    cfg = read_adapter_config(path)
    tensors = read_adapter_weights(path, cfg, check_checksum)
    if is_peft_config(cfg):
        return artifact_from_peft(cfg, cfg_file, weights_file, tensors)
    try:
        method = get_method(str(cfg["adaptation_type"]))
        method_cfg = method.make_config(cfg["method_config"])
    except LsrAdaptError as e:
        raise LsrAdaptError(f"{cfg_file}: {e}") from None
    targets = tuple(str(t) for t in cfg["target_modules"]) if method.make_layer is not None else ()
    return Artifact(method.name, method_cfg, targets, tensors, str(weights_file), cfg)


def check_base(model: nn.Module, art: Artifact) -> None:
    """The model's base must be the one the adapter was trained on (its fingerprint)."""
    fp = art.meta.get("base_fingerprint")
    problem = fingerprint_problem(model, fp, exclude=set(art.tensors)) if fp else None
    if problem:
        raise LsrAdaptError(f"{art.source}: {problem} (base_model {art.meta.get('base_model')!r}; "
                            f"pass check_fingerprint=False / --no-fingerprint-check to load anyway)")


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


def _check_tensors(model: nn.Module, art: Artifact, new_layers: dict[str, nn.Module] | None) -> None:
    """The artifact's tensors must have a place of the same shape in the model (with ``new_layers``
    installed); raises on a mismatch."""
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
    with torch.no_grad():
        for n, t in art.tensors.items():
            state[n].copy_(t)
    if remerge:
        for layer in adapter_layers(model).values():
            layer.merge()


def _put(model: nn.Module, art: Artifact, rebuild: bool) -> None:
    new_layers, was_merged = _prepare_switch(model, art, rebuild)
    device = next(model.parameters()).device
    art.tensors = {n: t.to(device) for n, t in art.tensors.items()}
    _install(model, art, new_layers, was_merged)


def read_checked(model: nn.Module, path, *, check_fingerprint: bool = True, check_checksum: bool = True,
                 head: bool = True) -> Artifact:
    """The adapter at ``path``, verified against its checksum and the model's base; ``head=False``
    keeps only the adapter layers' own tensors (continuing on a task with another label set)."""
    art = artifact_from_dir(path, check_checksum)
    if check_fingerprint:
        check_base(model, art)
    if not head:
        prefixes = tuple(f"{t}." for t in art.targets)
        art.tensors = {n: t for n, t in art.tensors.items() if n.startswith(prefixes)}
    return art


def load_adapter(model: nn.Module, path, *, check_fingerprint: bool = True, check_checksum: bool = True,
                 head: bool = True, rebuild: bool = True) -> dict:
    """Load an adapter directory (lsr-adapt or peft LoRA format) into ``model``; returns its config.

    The model may be plain (it is wrapped with the adapter's method) or already wrapped (its adapter
    layers are rebuilt from the saved hyperparameters; ``rebuild=False`` loads into the model's
    current adapter layers, whose config must be the saved one). ``head=False`` leaves the task head
    as it is. For several adapters on one model, use an ``AdapterBank``.
    """
    art = read_checked(model, path, check_fingerprint=check_fingerprint, check_checksum=check_checksum, head=head)
    _put(model, art, rebuild)
    return art.meta


class AdapterBank:
    """Several named adapters for one model in memory; one of them is active (in the model)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._adapters: dict[str, Artifact] = {}
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        return sorted(self._adapters)

    def __contains__(self, name: str) -> bool:
        return name in self._adapters

    def load(self, path, name: str = "default", *, check_fingerprint: bool = True, check_checksum: bool = True,
             head: bool = True) -> dict:
        """Read and check the adapter at ``path``, keep it as ``name`` and make it the active one."""
        art = read_checked(self.model, path, check_fingerprint=check_fingerprint,
                           check_checksum=check_checksum, head=head)
        self.add(name, art)
        return art.meta

    def add(self, name: str, art: Artifact) -> None:
        """Keep ``art`` as ``name`` (checked against the model first) and make it the active one."""
        _put(self.model, art, rebuild=not art.same_layers(self._adapters.get(self.active)))
        self._adapters[name] = art
        self.active = name

    def activate(self, name: str) -> None:
        """Make the named adapter the active one, in place (layers kept when their config is the same)."""
        if name not in self._adapters:
            raise LsrAdaptError(f"no adapter named {name!r} is loaded; valid choices: "
                                f"{', '.join(self.names) or '(none)'}")
        if self.active == name:
            return
        art = self._adapters[name]
        new_layers, was_merged = _prepare_switch(self.model, art, not art.same_layers(self._adapters.get(self.active)))
        _install(self.model, art, new_layers, was_merged)
        self.active = name

