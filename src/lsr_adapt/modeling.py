"""Load a HF model + tokenizer, apply an adapter method, and decide what trains.

What the head reads (``model.pooling``) is ``pooling.py``; this module applies it when it loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import adapter_layers, apply_adapter, logical_numel
from .errors import LsrAdaptError, first_line
from .pooling import POOLING_ATTR, set_pooling

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


# transformers 5.2x (utils/loading_report.py: log_state_dict_report, written against 5.24) logs every
# from_pretrained whose checkpoint lacks or leaves weights as a WARNING table "<Class> LOAD REPORT from:
# <name>" on the transformers.modeling_utils logger. Loading a base checkpoint into a sequence
# classifier, a fresh head (and a pooler the checkpoint lacks, or leaves unused) is the point, not a
# problem: load_classifier drops that table while it loads (a filter on that one logger, for that
# call) and report_loading says it in one INFO line; anything else still warns. Public knob used:
# from_pretrained(output_loading_info=True).
class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


class _without_load_report:
    def __enter__(self):
        self.logger, self.filter = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
        self.logger.addFilter(self.filter)

    def __exit__(self, *exc):
        self.logger.removeFilter(self.filter)
        return False


# bitsandbytes 0.50 (backends/cpu/ops.py) warns at import, on a CPU with AVX512-BF16, "Failed to load CPU
# gemm_4bit_forward from kernels-community: No module named 'kernels'", and peft 0.21 (peft/helpers.py)
# imports bitsandbytes whenever it is installed, which transformers' Trainer imports: so every run
# printed it, QLoRA or not. Only that record of that logger is held back here; a QLoRA run, the one
# that uses the 4-bit kernels, gets it back as one line when it applies its method (prepare_model).
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"


class _HoldBnbKernelWarning(logging.Filter):
    held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Failed to load CPU gemm_4bit_forward"):
            self.held.append(record.getMessage())
            return False
        return True


logging.getLogger(BNB_LOGGER).addFilter(_HoldBnbKernelWarning())


def _modules(keys) -> str:
    """``classifier.weight, classifier.bias`` -> ``classifier``: the modules the keys belong to."""
    return ", ".join(sorted({k.rsplit(".", 1)[0] for k in keys}))


def report_loading(model: nn.Module, info: dict, name_or_path: str) -> None:
    """What the load left as it was meant to (INFO) and what it did not (WARNING), one line each.

    Meant: weights missing from the checkpoint in the task head (outside the base model) or its
    pooler, and checkpoint weights outside the base model (a pretraining head) or in a pooler the
    class does not use. Anything else (base weights missing or left over, shape mismatches) warns."""
    prefix = getattr(model, "base_model_prefix", "") or ""

    def head_side(key: str) -> bool:
        return not prefix or not key.startswith(prefix + ".") or key.startswith(f"{prefix}.pooler.")

    missing, unused = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    fresh, unused_ok = [k for k in missing if head_side(k)], [k for k in unused if head_side(k)]
    what = type(model).__name__
    if fresh or unused_ok:
        log.info("%s from %s: initialised fresh (not in the checkpoint): %s%s", what, name_or_path,
                 _modules(fresh) or "nothing", f"; unused checkpoint weights: {_modules(unused_ok)}" if unused_ok else "")
    odd_missing, odd_unused = [k for k in missing if not head_side(k)], [k for k in unused if not head_side(k)]
    if odd_missing:
        log.warning("%s from %s: base weights missing from the checkpoint (random init): %s", what, name_or_path,
                    ", ".join(odd_missing))
    if odd_unused:
        log.warning("%s from %s: checkpoint weights the model does not use: %s", what, name_or_path,
                    ", ".join(odd_unused))
    for key, *shapes in info.get("mismatched_keys") or []:
        log.warning("%s from %s: %s has another shape in the checkpoint %s", what, name_or_path, key, shapes)


# What a local model dir must hold for AutoTokenizer to build a real vocabulary (any one entry):
# without them transformers still builds a tokenizer from config.json, one with no vocabulary that
# turns every text into its special tokens alone (<s></s>), and training "succeeds" on nothing.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",), ("spiece.model",),
                   ("sentencepiece.bpe.model",), ("tokenizer.model",), ("vocab.model",), ("spm.model",),
                   ("source.spm",), ("vocab.json",), ("tokenizer.tiktoken",))


def check_tokenizer_files(name_or_path: str) -> None:
    """A local model dir that holds no tokenizer files is one line naming what it lacks."""
    from pathlib import Path

    local = Path(str(name_or_path)).expanduser()
    if not local.is_dir():
        return
    if any(all((local / f).is_file() for f in group) for group in TOKENIZER_FILES):
        return
    wanted = ", ".join(" + ".join(g) for g in TOKENIZER_FILES[:4])
    raise LsrAdaptError(f"model dir {local} holds no tokenizer files (looked for {wanted}, ...); copy the "
                        f"tokenizer files of the checkpoint into it (tokenizer.save_pretrained({str(local)!r}))")


def check_tokenizer_works(tok, name_or_path: str) -> None:
    """The tokenizer has a vocabulary beyond its special tokens (built from config.json alone, it
    has only those, and every text becomes <s></s>)."""
    special = set(getattr(tok, "all_special_tokens", []) or [])
    if len(tok) <= len(special):
        raise LsrAdaptError(f"the tokenizer of {name_or_path!r} has no vocabulary ({len(tok)} tokens, all special: "
                            f"every text would become {''.join(sorted(special)[:2])}); give a model dir with its "
                            f"tokenizer files")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    from .hub import hub_error, require_hub

    check_tokenizer_files(name_or_path)
    try:
        require_hub(name_or_path, "model")  # an unreachable hub: one line at once, not a minute of retries
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "model", e) or LsrAdaptError(
            f"cannot load the tokenizer of {name_or_path!r}: {first_line(e)}") from None
    check_tokenizer_works(tok, name_or_path)
    if tok.pad_token is None:  # GPT-2 / Llama style tokenizers ship without one
        tok.pad_token = tok.eos_token
    return tok


# Model types whose position ids start after the padding index (fairseq style): the first usable
# position is pad_token_id + 1, so RoBERTa-base's 514 position embeddings take 512 tokens.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                     "data2vec-text", "ibert", "mpnet", "longformer", "luke", "markuplm", "esm"}


def position_limit(config) -> int | None:
    """The most tokens a model with learned absolute positions takes (an index error beyond it), or
    None for positions that extrapolate (RoPE, relative buckets) or an unknown layout."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if rope or getattr(config, "rope_theta", None) is not None:
        return None  # rotary positions: no embedding table to index past
    if getattr(config, "model_type", None) == "deberta-v2" and not getattr(config, "position_biased_input", True):
        return None
    for attr in ("n_positions", "max_position_embeddings"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            if attr == "max_position_embeddings" and getattr(config, "model_type", None) in _OFFSET_POSITIONS:
                pad = getattr(config, "pad_token_id", None)
                return n - ((pad if isinstance(pad, int) and pad >= 0 else 1) + 1)
            return n
    return None


def check_max_length(config, max_length, key: str = "data.max_length") -> None:
    """``max_length`` tokens fit the model's positions (``position_limit``), else one line naming both."""
    if max_length is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise LsrAdaptError(f"{key}={max_length!r}: must be an integer >= 1 (tokens)")
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        where = (f"max_position_embeddings {config.max_position_embeddings} minus the padding offset "
                 f"{config.max_position_embeddings - limit}"
                 if getattr(config, "model_type", None) in _OFFSET_POSITIONS else "its position embeddings")
        raise LsrAdaptError(f"{key}={max_length}: more tokens than the model takes ({limit}: {where}); "
                            f"set {key}={limit} or less")


def local_config(name_or_path: str):
    """A local checkpoint's config (config.json alone, no weights), or None (a hub id, no config.json,
    or one that does not parse: the model load that follows reports that in its own words)."""
    import json
    from pathlib import Path

    cfg_file = Path(str(name_or_path)).expanduser() / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(cfg_file.parent))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def check_max_length_before_loading(name_or_path: str, max_length, key: str = "data.max_length") -> None:
    """``check_max_length`` on a checkpoint's config.json alone (local dir), before any weights load;
    a hub id is checked after loading (its config needs the hub)."""
    config = None if max_length is None else local_config(name_or_path)
    if config is not None:
        check_max_length(config, max_length, key)


def load_classifier(name_or_path: str, num_labels: int, dtype: str | None = None,
                    pooling: str | None = None) -> LoadedModel:
    """``AutoModelForSequenceClassification.from_pretrained`` (hub id or local dir) + tokenizer.

    Records which weights the checkpoint lacked (the head, and e.g. a pooler a sentence-embedding
    checkpoint was saved without): they start random, so they must train.

    ``pooling`` (``model.pooling``): what the head reads, ``cls`` (the architecture's own: the first
    token) or ``mean`` (the attention-mask-weighted mean of the last hidden states, as
    sentence-transformers checkpoints were trained to be read; ``pooling.set_pooling``). ``None``: what the
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
        with _without_load_report():  # report_loading below says it in a line or two
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
    report_loading(model, info, name_or_path)
    set_pooling(model, pooling if pooling is not None else getattr(model.config, POOLING_ATTR, "cls"))
    return LoadedModel(model, tokenizer, name_or_path, new_param_names=missing)


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


@dataclass(frozen=True)
class PreparedModel:
    """What ``prepare_model`` made of a loaded model.

    ``counts`` holds numbers only (``parameter_counts``: the keys ``results.json`` records as they
    are), so the head's names are a field of their own rather than a list inside the counts."""

    model: nn.Module  # the loaded model, its method applied in place
    counts: dict  # trainable_params, adapter_params, head_params, total_params, percent_trainable
    head_names: list[str]  # the task head's parameters (``head_parameter_names``; none for a causal LM)


def prepare_model(loaded: LoadedModel, adaptation_type: str, method_cfg=None, target_modules=None) -> PreparedModel:
    """Apply the method, mark what trains, and return the model, its parameter counts and its head."""
    model = loaded.model
    head = head_parameter_names(model, loaded.new_param_names)
    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    if loaded.frozen_output_modules is not None:  # no task head: the LM head is part of the base
        head, head_modules = [], sorted(set(head_modules) | set(loaded.frozen_output_modules))
    _, loaded.method_config = apply_adapter(model, adaptation_type, method_cfg, target_modules, exclude=head_modules)
    if adaptation_type == "qlora":  # the run that uses bitsandbytes' 4-bit kernels: its warning, once
        for message in _HoldBnbKernelWarning.held:
            log.warning("bitsandbytes: %s", message)
        _HoldBnbKernelWarning.held.clear()
    mark_trainable(model, head, train_base=getattr(loaded.method_config, "train_base", False))
    return PreparedModel(model, parameter_counts(model, head), head)


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
