"""The record of a run, assembled in one place: ``results.json`` and the adapter's own metadata."""

from __future__ import annotations

import dataclasses
import platform
import resource
from collections import Counter

import numpy as np
import torch
from omegaconf import DictConfig

from .. import __version__
from ..adapters import adapter_layers
from ..distributed import world_size
from ..pooling import POOLING_ATTR


def peak_memory() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def versions() -> dict:
    import transformers

    return {"lsr_adapt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


def adapter_meta(mcfg: DictConfig, dcfg: DictConfig, built, task_name: str, init_info) -> dict:
    """What ``adapter_config.json`` records beyond what the model itself tells (``artifacts.save_adapter``);
    ``mcfg`` / ``dcfg``: the ``model`` and ``data`` sections."""
    method_config = built.loaded.method_config
    return {
        "adaptation_type": built.adaptation_type,
        "method_config": dataclasses.asdict(method_config) if dataclasses.is_dataclass(method_config) else method_config,
        "target_modules": sorted(adapter_layers(built.model)),
        "trained_head": built.head_names,
        "base_model": str(mcfg.name_or_path),
        "loaded_from": built.name_or_path,
        "num_labels": int(dcfg.num_labels),  # 0: no task head (causal LM)
        "task": str(dcfg.name),
        "task_type": task_name,
        "label_names": list(dcfg.label_names) if dcfg.label_names else None,
        "text_fields": list(dcfg.text_fields),
        "pooling": getattr(built.model.config, POOLING_ATTR, None),  # what the head reads (classifiers)
        "init_from": init_info,
    }


def majority_class(task_name: str, splits: dict) -> dict | None:
    """The baseline a classifier has to beat: always predict the training split's most frequent label
    (chosen without looking at the evaluated splits); its accuracy on each evaluated split is the share
    of that split holding it. None for regression / language modelling, or without a training split."""
    if task_name != "classification" or "train" not in splits:
        return None
    counts = Counter(int(v) for v in splits["train"]["labels"])
    label = min(counts, key=lambda k: (-counts[k], k))  # a tie goes to the lowest class id
    rates = {}
    for split in ("validation", "test"):
        if split in splits:
            labels = [int(v) for v in splits[split]["labels"]]
            rates[split] = sum(v == label for v in labels) / len(labels)
    return {"label": label, **rates}


def results_record(dcfg: DictConfig, tcfg: DictConfig, freeze_adapter, built, task_name: str,
                   outcome: dict, precision: str, majority: dict | None = None) -> dict:
    """``results.json``: the run's config in brief (the model as configured, ``built.model_name``; the
    ``data`` and ``training`` sections; the root's ``freeze_adapter``), parameter counts, metrics, time, memory, versions."""
    peak_mb, peak_kind = peak_memory()
    extra = outcome["extra"]
    return {
        "adaptation_type": built.adaptation_type,
        "model_name": built.model_name,
        "task": str(dcfg.name),
        "task_type": task_name,
        **built.counts,
        "method_config": built.method_values,
        "pooling": getattr(built.model.config, POOLING_ATTR, None),  # what a classification head reads
        "init_from": built.init_info,
        "freeze_adapter": bool(freeze_adapter),
        "learning_rate": float(tcfg.learning_rate),
        "warmup_ratio": float(tcfg.warmup_ratio),
        "batch_size": int(tcfg.batch_size),
        "num_train_epochs": float(tcfg.num_train_epochs),
        "seed": int(tcfg.seed),
        "metric_name": outcome["metric"],
        "metric_before_training": outcome["before"][outcome["metric"]],
        "metrics_before_training": {k: outcome["before"][k] for k in outcome["metric_names"]
                                    if k in outcome["before"]},
        "eval_history": outcome["history"],
        "best_metric": outcome["best_metric"],
        "best_epoch": outcome["best_epoch"],
        "test_metrics": outcome["test_metrics"],
        "majority_class": majority,  # {label, validation, test}: accuracy of always predicting train's commonest label
        **({"extra_eval_metrics": extra["after"], "extra_eval_metrics_before_training": extra["before"]}
           if extra["after"] else {}),
        "resumed_from": str(outcome["resumed_from"]) if outcome["resumed_from"] else None,
        "skipped_nonfinite_steps": outcome["skipped"],
        "world_size": world_size(),
        "train_runtime_s": round(outcome["train_runtime"], 3),
        "examples_per_s": outcome["train_metrics"].get("train_samples_per_second"),
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_kind": peak_kind,
        "precision": precision,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()})",
        "versions": versions(),
        **outcome["method_results"],
        "status": "completed",
    }
