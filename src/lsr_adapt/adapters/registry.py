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

    config_cls:  dataclass of the method's hyperparameters (the ``model.<name>`` YAML section).
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


METHODS: dict[str, AdapterMethod] = {}


def register_method(name: str, config_cls: type, make_layer=None, prepare=None, *, replace: bool = False,
                    **hooks) -> AdapterMethod:
    """Register ``name``; ``hooks`` are the optional training hooks of ``AdapterMethod``."""
    if name in METHODS and not replace:
        raise ValueError(f"adaptation_type {name!r} is already registered")
    method = AdapterMethod(name, config_cls, make_layer, prepare, **hooks)
    METHODS[name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise choices_error("adaptation_type", name, METHODS) from None
