"""Load a HF model + tokenizer, apply an adapter method, and decide what trains."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import adapter_layers, apply_adapter
from .errors import LsrAdaptError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name_or_path: str
    new_param_names: list[str] = field(default_factory=list)  # weights the checkpoint did not provide
    method_config: object = None
    # a causal LM's output layer (tasks/causal_lm.py): pretrained, so never adapted and never trained
    frozen_output_modules: list[str] | None = None


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise LsrAdaptError(f"cannot load the tokenizer of {name_or_path!r}: {_first_line(e)}") from None
    if tok.pad_token is None:  # GPT-2 / Llama style tokenizers ship without one
        tok.pad_token = tok.eos_token
    return tok


def load_classifier(name_or_path: str, num_labels: int, dtype: str | None = None) -> LoadedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` (hub id or local dir) + tokenizer.

    Records which weights the checkpoint lacked (the head, and e.g. a pooler a sentence-embedding
    checkpoint was saved without): they start random, so they must train.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name_or_path)
    kwargs = {"num_labels": num_labels, "output_loading_info": True}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise LsrAdaptError(f"cannot load model {name_or_path!r}: {_first_line(e)}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # the classification loss is a mean over the batch that ignores `num_items_in_batch`; left True
    # (the **kwargs in forward), the Trainer would multiply it by the process count under DDP and
    # skip its division by gradient_accumulation_steps, growing the gradient by both factors
    model.accepts_loss_kwargs = False
    missing = sorted(set(info.get("missing_keys", [])))
    return LoadedModel(model, tokenizer, name_or_path, new_param_names=missing)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def head_parameter_names(model: nn.Module, new_param_names=()) -> list[str]:
    """The task head: parameters outside the base model, BERT's pooler, and any weight the
    checkpoint did not provide.

    BERT-style pooler (dense + tanh on the first token) exists only to feed the classifier: it is
    the counterpart of RoBERTa's ``classifier.dense``, and a sentence-embedding checkpoint ships it
    untrained for classification (or not at all), so it trains with the head.
    """
    prefix = getattr(model, "base_model_prefix", "")
    names = set()
    params = dict(model.named_parameters())
    for name in params:
        if (prefix and not name.startswith(prefix + ".")) or name.startswith(f"{prefix}.pooler."):
            names.add(name)
    # loading info may name a parameter by its tied alias; keep only real ones
    names.update(n for n in new_param_names if n in params)
    return sorted(names)


def mark_trainable(model: nn.Module, head_names, train_base: bool = False) -> None:
    """Freeze everything, then unfreeze adapter parameters and the head (all of it with ``train_base``)."""
    head = set(head_names)
    adapters = {f"{ln}.{pn}" for ln, layer in adapter_layers(model).items() for pn in layer.adapter_parameters()
                if pn not in layer.frozen_params}
    for name, p in model.named_parameters():
        p.requires_grad_(train_base or name in head or name in adapters)


def logical_numel(p: torch.Tensor) -> int:
    """Number of weights a parameter holds; a bitsandbytes 4-bit weight stores two per byte element."""
    quant_state = getattr(p, "quant_state", None)
    return quant_state.shape.numel() if quant_state is not None else p.numel()


def parameter_counts(model: nn.Module, head_names) -> dict:
    head = set(head_names)
    adapter = sum(layer.num_adapter_params() for layer in adapter_layers(model).values())
    params = dict(model.named_parameters())
    total = sum(logical_numel(p) for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    head_count = sum(params[n].numel() for n in head if n in params)
    return {
        "trainable_params": trainable,
        "adapter_params": adapter,
        "head_params": head_count,
        "total_params": total,
        "percent_trainable": 100.0 * trainable / total,
    }


def prepare_model(loaded: LoadedModel, adaptation_type: str, method_cfg=None, target_modules=None) -> dict:
    """Apply the method, mark what trains, and return the parameter counts."""
    model = loaded.model
    head = head_parameter_names(model, loaded.new_param_names)
    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    if loaded.frozen_output_modules is not None:  # no task head: the LM head is part of the base
        head, head_modules = [], sorted(set(head_modules) | set(loaded.frozen_output_modules))
    _, loaded.method_config = apply_adapter(model, adaptation_type, method_cfg, target_modules, exclude=head_modules)
    mark_trainable(model, head, train_base=getattr(loaded.method_config, "train_base", False))
    counts = parameter_counts(model, head)
    counts["head_param_names"] = head
    return counts


def _load_with_method(adaptation_type, name_or_path, num_labels, target_modules, method_kwargs):
    loaded = load_classifier(name_or_path, num_labels)
    prepare_model(loaded, adaptation_type, method_kwargs, target_modules)
    return loaded.model, loaded.tokenizer


def load_lora_model(name_or_path: str = "roberta-base", num_labels: int = 2, target_modules=None, r: int = 8,
                    alpha: float = 8.0, dropout: float = 0.0, use_rslora: bool = False):
    """Load a HF classifier + tokenizer, wrap ``target_modules`` with LoRA, freeze the rest but the head."""
    return _load_with_method("lora", name_or_path, num_labels, target_modules,
                             dict(r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora))


def load_lsr_model(name_or_path: str = "roberta-base", num_labels: int = 2, target_modules=None, r: int = 2,
                   num_terms: int = 16, alpha: float = 64.0, dropout: float = 0.0, form: str = "sum",
                   path: str = "auto", in_factors=None, out_factors=None):
    """Load a HF classifier + tokenizer, wrap ``target_modules`` with LSR, freeze the rest but the head."""
    return _load_with_method("lsr", name_or_path, num_labels, target_modules,
                             dict(r=r, num_terms=num_terms, alpha=alpha, dropout=dropout, form=form, path=path,
                                  in_factors=in_factors, out_factors=out_factors))
