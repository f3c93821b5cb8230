"""Training: ``train(cfg)`` (``recipe.py``) and the pieces it is made of.

``recipe`` (the phases of a run) · ``rundir`` (the run dir, its lock) · ``arguments`` (config →
``TrainingArguments``) · ``trainer`` (the one Trainer subclass) · ``recorder`` (per-epoch metrics,
best weights) · ``checkpoints`` (checkpoint files, resume) · ``results`` (``results.json``) ·
``compat`` (workarounds for library internals, with their versions).

``train`` is imported on first use (PEP 562): ``main.py`` reads ``rundir`` and validates the config
before the Trainer stack (transformers' trainer, accelerate, peft: seconds) is imported, so bad input
is answered at once.
"""

from ..outpaths import RESULTS

__all__ = ["RESULTS", "train"]


def __getattr__(name: str):
    if name == "train":
        from .recipe import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
