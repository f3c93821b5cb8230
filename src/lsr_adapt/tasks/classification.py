"""Sequence classification (``num_labels >= 2``, argmax) and regression (one output, MSE loss).

The model is ``AutoModelForSequenceClassification`` (``modeling.load_classifier``); a checkpoint
that already holds a head with ``num_labels`` outputs (e.g. DistilBERT fine-tuned on SST-2) keeps
it. ``model.pooling``: what the head reads, the first token (``cls``, default) or the
attention-mask-weighted mean of the last hidden states (``mean``). Metrics (``metrics.py``) are
computed locally from the logits.
"""

from __future__ import annotations

from ..data import prepare_splits
from ..metrics import compute, mean_loss
from ..modeling import check_max_length, check_max_length_before_loading, load_classifier, position_limit
from . import Task


def _load(name_or_path: str, data_cfg, model_cfg=None):
    # model.pooling: cls (the architecture's first token) | mean (masked mean of the last hidden states)
    pooling = (model_cfg or {}).get("pooling")
    # data.max_length beyond the model's positions would train until an index error: refused from
    # config.json before the weights load (a local dir), else right after loading (a hub id)
    max_length = data_cfg.get("max_length")
    check_max_length_before_loading(name_or_path, max_length)
    loaded = load_classifier(name_or_path, int(data_cfg.num_labels), pooling=str(pooling) if pooling else None)
    check_max_length(loaded.model.config, max_length)
    limit = position_limit(loaded.model.config)
    tok = loaded.tokenizer
    if limit is not None and not (0 < (tok.model_max_length or 0) <= limit):
        # data.max_length=null truncates at the tokenizer's limit: one that records none (~1e30) or
        # more than the model's positions would let a long text through to an index error
        tok.model_max_length = limit
    return loaded


def _prepare_splits(data_cfg, tokenizer, seed: int = 0, need_train: bool = True):
    return prepare_splits(data_cfg, tokenizer, seed=seed, need_train=need_train)


def _synthetic(data_cfg, parts) -> dict:
    """JSON-lines files in the data config's format (its text fields, label field and labels) with a
    signal a tiny model learns (``smoke.synthetic_files``): one set of files per (sizes, seed) part."""
    from ..smoke import synthetic_files

    labels = list(data_cfg.get("label_names") or []) or None
    files = {}
    for sizes, seed in parts:
        files.update(synthetic_files(list(data_cfg.text_fields), data_cfg.label_field, int(data_cfg.num_labels),
                                     sizes, seed=seed, label_values=labels))
    return {"data_files": files}


def _collator(tokenizer, data_cfg=None):
    from transformers import DataCollatorWithPadding

    if data_cfg is not None and data_cfg.get("pad_to_max_length"):
        # data.pad_to_max_length: every batch (batch, data.max_length), the static shapes CUDA-graph
        # capture (training.torch_compile_mode=reduce-overhead) replays without re-recording; the
        # attention mask keeps the extra padding inert. max_length null: the tokenizer's limit, which
        # is also where tokenize() truncates (_load caps it at the model's positions)
        max_length = data_cfg.get("max_length")
        return DataCollatorWithPadding(tokenizer, padding="max_length",
                                       max_length=None if max_length is None else int(max_length))
    return DataCollatorWithPadding(tokenizer)  # to each batch's longest row


def _compute_metrics(names, data_cfg=None):
    # "loss" replaces the Trainer's eval_loss (a mean of batch means, off under DDP's uneven splits)
    return lambda p: {**compute(names, p.predictions, p.label_ids), "loss": mean_loss(p.predictions, p.label_ids)}


def make_task(name: str) -> Task:
    return Task(name, _load, _prepare_splits, _collator, _compute_metrics, _synthetic)
