"""Task types: what a data config's ``task_type`` changes in a training run.

``training.train`` is task-agnostic; it asks ``get_task(data_cfg)`` for

* ``load(name_or_path, data_cfg, model_cfg) -> LoadedModel``: the model class and its tokenizer /
  feature extractor (sequence classifier, causal LM, Whisper-encoder detector),
* ``prepare_splits(data_cfg, tokenizer, seed, need_train) -> {"train", "validation", ["test"]}``,
* ``collator(tokenizer, data_cfg)`` (``data.pad_to_max_length``: static batch shapes), ``compute_metrics(metric_names, data_cfg)`` (None: metrics come from the loss),
* ``loss_metrics``: metrics computed from the evaluation loss, or None (the causal LM's perplexity;
  such evaluations keep no logits),
* ``training_args(data_cfg)``: extra ``TrainingArguments`` (the GW task's label names),
* ``synthetic(data_cfg, parts) -> data overrides``: the task's stand-in data (``data.synthetic``),
  generated once into the cache as files of its own format, ``parts`` = ``[({split: rows}, seed), ...]``;
  returns the ``data_files`` / ``path`` that point at them (``sources.resolve_data``).

Task types (``data.task_type``; docs/tasks.md):

=================  ==========================================================================
classification     sequence classification, ``num_labels >= 2`` (GLUE, IMDB, drug reviews)
regression         one output, MSE loss (GLUE STS-B), ``num_labels == 1``
causal_lm          next-token prediction, perplexity (wikitext-2, local text files)
gw                 gravitational-wave detection from two detectors' strain, Whisper encoder
=================  ==========================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..data import SPLIT_ROLES
from ..errors import LsrAdaptError

TASK_MODULES = {
    "classification": "classification",
    "regression": "classification",
    "causal_lm": "causal_lm",
    "gw": "gw",
}


def _no_training_args(data_cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[..., Any]
    prepare_splits: Callable[..., dict]
    collator: Callable[[Any, Any], Any]  # (tokenizer, data_cfg)
    compute_metrics: Callable[[list[str], Any], Callable | None]
    synthetic: Callable[[Any, list], dict]  # (data_cfg, [({split: rows}, seed), ...]) -> data_files / path
    training_args: Callable[[Any], dict] = _no_training_args  # extra TrainingArguments for this task
    loss_metrics: Callable[[float], dict] | None = None  # e.g. {"perplexity": exp(loss)}


def task_type_of(data_cfg) -> str:
    """``data.task_type``; configs without one are classification (regression when num_labels is 1)."""
    name = data_cfg.get("task_type")
    if name is None:
        return "regression" if int(data_cfg.get("num_labels") or 2) == 1 else "classification"
    name = str(name)
    if name not in TASK_MODULES:
        raise LsrAdaptError(f"unknown data.task_type {name!r}; valid choices: {', '.join(TASK_MODULES)}")
    num_labels = data_cfg.get("num_labels")
    if name == "regression" and int(num_labels) != 1:
        raise LsrAdaptError(f"data.task_type=regression needs data.num_labels=1, not {num_labels}")
    if name == "classification" and int(num_labels) < 2:
        raise LsrAdaptError(f"data.task_type=classification needs data.num_labels >= 2, not {num_labels} "
                            f"(num_labels=1 is task_type=regression)")
    return name


def get_task(data_cfg) -> Task:
    name = task_type_of(data_cfg)
    module = importlib.import_module(f".{TASK_MODULES[name]}", __name__)
    return module.make_task(name)


def extra_eval_datasets(task: Task, data_cfg, tokenizer, seed: int) -> dict:
    """``data.extra_eval_splits`` (e.g. MNLI's ``validation_mismatched``) prepared like the validation
    split, each by the task's own ``prepare_splits`` with that split in the validation role."""
    from omegaconf import OmegaConf

    out = {}
    for name in data_cfg.get("extra_eval_splits") or []:
        name = str(name)
        if name in SPLIT_ROLES:
            raise LsrAdaptError(f"data.extra_eval_splits names a role ({name!r}); list dataset split names "
                                f"other than those in data.splits, e.g. validation_mismatched")
        # generated data holds the extra splits too (sources.synthetic_parts: each at a seed of its own)
        plain = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))  # not struct: keys may be new
        cfg = OmegaConf.merge(plain, {"splits": {"train": None, "validation": name, "test": None},
                                         "validation_from_train": None})
        out[name] = task.prepare_splits(cfg, tokenizer, seed=seed, need_train=False)["validation"]
    return out


def evaluate_extra(trainer, datasets: dict, metric_names) -> dict:
    """``{split: {metric: value, "loss": ...}}`` for each extra evaluation split, on the current weights."""
    out = {}
    for name, ds in datasets.items():
        raw = trainer.evaluate(ds, metric_key_prefix=name)
        out[name] = {k.removeprefix(f"{name}_"): v for k, v in raw.items()
                     if k.removeprefix(f"{name}_") in [*metric_names, "loss"]}
    return out
