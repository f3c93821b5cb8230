"""Training: ``train(cfg)`` (``recipe.py``) and the pieces it is made of.

``recipe`` (the phases of a run) · ``rundir`` (the run dir, its lock) · ``arguments`` (config →
``TrainingArguments``) · ``trainer`` (the one Trainer subclass) · ``recorder`` (per-epoch metrics,
best weights) · ``checkpoints`` (checkpoint files, resume) · ``results`` (``results.json``) ·
``compat`` (workarounds for library internals, with their versions).
"""

from .recipe import train
from .rundir import RESULTS

__all__ = ["RESULTS", "train"]
