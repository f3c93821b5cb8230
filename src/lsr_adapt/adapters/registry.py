"""``adaptation_type`` name → method. Adding a method: one file, one ``register_method`` call, one YAML."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import LsrAdaptError, choices_error


@dataclass(frozen=True)
class AdapterMethod:
    """How one ``adaptation_type`` turns a frozen base model into a trainable one.

    config_cls:  dataclass of the method's hyperparameters (the ``model.<name>`` YAML section); its
                 ``__post_init__`` checks their ranges, choices and cross-field rules.
    make_layer:  ``(base_layer, config, layer_name) -> AdapterLayer`` for methods that wrap target
                 layers; None for methods that wrap nothing (full fine-tuning, head only).
    prepare:     optional ``(model, config) -> None`` run after wrapping (e.g. quantize the rest).

    Optional training hooks (all generic: a method that needs none leaves them None):

    param_groups:  ``(model, config, lr, weight_decay) -> list[dict] | None``: optimizer parameter
                   groups (e.g. LoRA+'s larger B learning rate); the trainer builds its usual
                   optimizer class over them and keeps its own learning-rate schedule.
    training_args: ``(config) -> dict`` of extra ``TrainingArguments`` (e.g. a paged optimizer).
    after_train:   ``(model, config, evaluate) -> dict`` of extra ``results.json`` entries, run on
                   the best weights; ``evaluate()`` returns the validation metrics (e.g. DyLoRA's
                   rank → metric table).
    """

    name: str
    config_cls: type
    make_layer: Callable[[nn.Module, Any, str], nn.Module] | None = None
    prepare: Callable[[nn.Module, Any], None] | None = None
    param_groups: Callable[[nn.Module, Any, float, float], list[dict] | None] | None = None
    training_args: Callable[[Any], dict] | None = None
    after_train: Callable[[nn.Module, Any, Callable[[], dict]], dict] | None = None

    def make_config(self, values: Mapping[str, Any] | Any | None = None):
        """Build the config dataclass from a mapping, ignoring nothing silently: unknown keys are errors."""
        if isinstance(values, self.config_cls):
            return values
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LsrAdaptError(
                f"unknown {self.name} option(s) {unknown}; valid options: {', '.join(sorted(known))}"
            )
        try:
            return self.config_cls(**values)
        except (TypeError, ValueError) as e:
            raise LsrAdaptError(f"bad {self.name} config {values}: {e}") from None

    def adapter_params(self, in_features: int, out_features: int, config: Mapping[str, Any] | Any | None = None,
                       layer: str = "") -> int:
        """Adapter parameters of one layer ``in_features`` → ``out_features``: the layer class's own
        formula (``AdapterLayer.adapter_params``), nothing built."""
        size = getattr(self.make_layer, "adapter_params", None)
        if size is None:
            raise LsrAdaptError(f"adaptation_type {self.name!r} has no adapter size formula (its layer class "
                                f"has no adapter_params)")
        return size(in_features, out_features, self.make_config(config), layer)


METHODS: dict[str, AdapterMethod] = {}


def register_method(name: str, config_cls: type | None = None, make_layer=None, prepare=None, *,
                    replace: bool = False, **hooks) -> AdapterMethod:
    """Register ``name``; ``hooks`` are the optional training hooks of ``AdapterMethod``.

    ``config_cls`` defaults to the layer class's own ``config_cls`` (the layer names its config once:
    ``register_method("lora", make_layer=LoRALinear)``); a method that reuses another's layer with a
    config of its own (LoRA+) passes that config, a subclass of the layer's."""
    if name in METHODS and not replace:
        raise ValueError(f"adaptation_type {name!r} is already registered")
    layer_cfg = getattr(make_layer, "config_cls", None)
    if config_cls is None:
        if layer_cfg is None:
            raise ValueError(f"register_method({name!r}): give config_cls, or a make_layer class with a config_cls")
        config_cls = layer_cfg
    elif layer_cfg is not None and not issubclass(config_cls, layer_cfg):
        raise ValueError(f"register_method({name!r}): {config_cls.__name__} is not a {layer_cfg.__name__}, the "
                         f"config {getattr(make_layer, '__name__', make_layer)} reads")
    method = AdapterMethod(name, config_cls, make_layer, prepare, **hooks)
    METHODS[name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise choices_error("adaptation_type", name, METHODS) from None
