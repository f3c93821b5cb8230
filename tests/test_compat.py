"""training/compat.py: the transformers argument names that moved between the versions we support."""

from __future__ import annotations

import dataclasses

from transformers import TrainingArguments

from lsr_adapt.training import compat


def test_checkpointing_uses_the_name_this_transformers_has(monkeypatch):
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    args = compat.checkpointing_args(True)
    (flag,) = [k for k in args if not k.endswith("_kwargs")]
    assert flag in names and f"{flag}_kwargs" in names and args[f"{flag}_kwargs"] == {"use_reentrant": False}
    TrainingArguments(output_dir="unused", use_cpu=True, **args)  # accepted as given
    # transformers 5.17 (seen on a GPU machine) had gradient_checkpointing and no activation_checkpointing
    monkeypatch.setattr(compat, "_training_argument_names", lambda: names - {"activation_checkpointing"})
    assert compat.checkpointing_args(False) == {"gradient_checkpointing": False,
                                                "gradient_checkpointing_kwargs": {"use_reentrant": False}}
