"""What a sequence classifier's head reads: the first token (``cls``) or the masked ``mean``.

Its own module, apart from loading (``modeling.load_classifier`` calls ``set_pooling``): the mean is
forward hooks on a loaded model, with no weights and no loading of its own, and ``POOLING_ATTR`` is
also what a run's record reads (``training/results.py``) to say which way its head read.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from .errors import LsrAdaptError

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
