"""The two reference points every PEFT method is compared against; neither wraps any layer.

* ``full``: every weight of the model trains (the usual fine-tuning; trainable = all parameters,
  124.6M for RoBERTa-base with a 2-class head).
* ``head``: only the task head trains (plus any weight the checkpoint lacked, which starts random),
  i.e. a frozen encoder as a feature extractor (RoBERTa-base classification head: 592,130).

Both go through the same ``prepare_model`` / ``train`` pipeline as the adapters: ``mark_trainable``
unfreezes the head always and the whole model when the method config's ``train_base`` is true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .registry import register_method


@dataclass
class FullConfig:
    """No options: every parameter trains."""

    # a class constant, not a field: "full" without training the base would be "head"
    train_base: ClassVar[bool] = True


@dataclass
class HeadConfig:
    """No options: only the task head (and weights missing from the checkpoint) trains."""

    train_base: ClassVar[bool] = False


register_method("full", FullConfig)
register_method("head", HeadConfig)
