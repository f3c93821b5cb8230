"""Causal language modelling (``data.task_type: causal_lm``): next-token prediction, perplexity.

Model: ``AutoModelForCausalLM`` from a hub id, a local directory, or a ``.gguf`` file (dequantized
to float on load; needs ``pip install gguf``). Any adapter method applies (GPT-2's ``Conv1D`` and
Llama's ``Linear`` layers alike). There is no task head: the LM head is pretrained, so it is never
adapted and never trained, and the trainable weights are the adapter's alone (every weight with
``adaptation_type: full``).

Data: each document (a row's ``data.text_fields`` joined by newlines; a ``.txt`` file is one
document) is tokenized with the tokenizer's own special tokens, EOS is appended where the tokenizer
did not put one (``data.append_eos``), and a split's documents are concatenated and cut into
blocks of ``data.max_length`` tokens; a tail shorter than one block is dropped, as in
transformers' ``run_clm`` example. Labels are the input ids (the model shifts them by one), the
first one of each block -100: it is never a target, and left in, the Trainer would count it among
the tokens it divides the summed loss by, shrinking the loss by (L-1)/L.
Every block is full, so batches need no padding and the collator stacks them as they are:
``DataCollatorForLanguageModeling(mlm=False)`` would also turn every EOS label into -100 (these
tokenizers pad with EOS), and the model would never learn where a document ends.

Metric: perplexity = exp(L̄) with L̄ the mean next-token cross-entropy (nats) over the split.
Every block predicts ``max_length - 1`` tokens, so the Trainer's evaluation loss (the mean of
per-batch token means, weighted by batch size) is exactly the per-token mean and exp(eval loss)
is the split's token-level perplexity (tests/test_tasks.py checks it against a hand computation).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from itertools import chain
from pathlib import Path

from ..errors import LsrAdaptError, first_line
from . import Task

log = logging.getLogger(__name__)


# -- model -------------------------------------------------------------------------------------------
def _source(name_or_path: str) -> tuple[str, dict]:
    """(from_pretrained source, extra kwargs): a ``.gguf`` file loads from its directory by file name."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() != ".gguf":
        return name_or_path, {}
    if not path.is_file():
        raise LsrAdaptError(f"GGUF file {name_or_path} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise LsrAdaptError(f"loading {path.name} needs the gguf package: pip install gguf")
    return str(path.parent), {"gguf_file": path.name}


def load_causal_lm(name_or_path: str, dtype: str | None = None):
    """``AutoModelForCausalLM`` + tokenizer as a ``modeling.LoadedModel`` whose output layer is frozen."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..modeling import LoadedModel

    source, kwargs = _source(str(name_or_path))
    from ..hub import hub_error, require_hub
    from ..modeling import check_tokenizer_files, check_tokenizer_works, position_limit

    if "gguf_file" not in kwargs:  # a GGUF file carries its tokenizer inside
        check_tokenizer_files(source)
    try:
        require_hub(source, "model")  # an unreachable hub: one line at once, not a minute of retries
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise hub_error(source, "model", e) or LsrAdaptError(
            f"cannot load the tokenizer of {name_or_path!r}: {first_line(e)}") from None
    check_tokenizer_works(tokenizer, str(name_or_path))
    if tokenizer.pad_token is None:  # GPT-2 / Llama tokenizers ship without one; blocks are never padded
        tokenizer.pad_token = tokenizer.eos_token
    if dtype:
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        require_hub(source, "model")
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise hub_error(source, "model", e) or LsrAdaptError(
            f"cannot load causal LM {name_or_path!r}: {first_line(e)}") from None
    if "gguf_file" in kwargs:
        # the weights are plain float tensors now; left marked as quantized, the Trainer refuses to train
        model.config.quantization_config = None
        model.hf_quantizer = None
        model.is_quantized = False
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    limit = position_limit(model.config)
    if limit is not None and not (0 < (tokenizer.model_max_length or 0) <= limit):
        # blocks longer than the position table fail with an index error: block_size_of caps at this
        tokenizer.model_max_length = limit
    output = model.get_output_embeddings()
    output_names = [n for n, m in model.named_modules() if m is output and n]
    return LoadedModel(model, tokenizer, str(name_or_path), frozen_output_modules=output_names)


def _load(name_or_path: str, data_cfg, model_cfg=None):
    return load_causal_lm(name_or_path, (model_cfg or {}).get("dtype"))


# -- data ----------------------------------------------------------------------------------------------
def synthetic_text_files(sizes: dict[str, int], seed: int = 0) -> dict[str, str]:
    """JSON-lines files of pseudo-word documents (field ``text``) with structure a tiny LM learns.

    A first-order Markov chain over ``smoke.WORDS``: each word has four successors (fixed by
    ``seed``) taken with probabilities 0.55 / 0.25 / 0.15 / 0.05, so the best possible perplexity
    is about exp(H) = exp(1.14) ≈ 3.1 per word, against ≈ 205 for a model that knows nothing.
    """
    from ..smoke import WORDS, generated_sample

    def build(tmp: Path):
        rng = random.Random(seed)
        successors = {w: rng.sample(WORDS, 4) for w in WORDS}
        for split, n in sizes.items():
            with open(tmp / f"{split}.jsonl", "w") as f:
                for _ in range(n):
                    word, words = rng.choice(WORDS), []
                    for _ in range(rng.randint(20, 40)):
                        words.append(word)
                        word = rng.choices(successors[word], weights=[0.55, 0.25, 0.15, 0.05])[0]
                    f.write(json.dumps({"text": " ".join(words)}) + "\n")

    out = generated_sample("lm", [sizes, seed], build)
    return {split: str(out / f"{split}.jsonl") for split in sizes}


def _synthetic(data_cfg, parts) -> dict:
    """Pseudo-word documents (``synthetic_text_files``) for each (sizes, seed) part; the sample has a
    validation split of its own, so none is carved from its train split."""
    files = {}
    for sizes, seed in parts:
        files.update(synthetic_text_files(sizes, seed=seed))
    return {"data_files": files, "validation_from_train": None}


def _raw(data_cfg):
    from ..data import load_raw, validation_from_train

    if not data_cfg.get("data_files") and not data_cfg.get("path"):
        raise LsrAdaptError(f"data={data_cfg.get('name')} needs data.data_files={{train: FILE, validation: FILE}} "
                            f"(.txt or .jsonl) or data.path=DIR holding train/validation files")
    return validation_from_train(*load_raw(data_cfg), data_cfg)


def block_size_of(data_cfg, tokenizer) -> int:
    size = int(data_cfg.get("max_length") or 512)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit and limit < 1_000_000 and size > limit:  # tokenizers without a limit report ~1e30
        log.warning("data.max_length=%d exceeds the model's %d positions; using %d-token blocks", size, limit, limit)
        size = int(limit)
    if size < 2:
        raise LsrAdaptError(f"data.max_length {size} is too small for language modelling; use at least 2")
    return size


def tokenize_documents(ds, data_cfg, tokenizer):
    """A dataset of token-id lists, one per non-empty document, each ending with EOS if configured."""
    fields = list(data_cfg.text_fields)
    append_eos = bool(data_cfg.get("append_eos", True)) and tokenizer.eos_token_id is not None
    eos = tokenizer.eos_token_id

    def encode(batch):
        texts = ["\n".join(str(v) for v in row if v is not None) for row in zip(*[batch[f] for f in fields])]
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else []
        out = []
        for text, x in zip(texts, ids):
            if not text.strip():  # blank: nothing when documents are EOS-framed, else as tokenized
                x = [] if append_eos else x
            elif append_eos and (not x or x[-1] != eos):
                x = [*x, eos]
            out.append(x)
        return {"input_ids": out}

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def group_blocks(ds, block_size: int):
    """Concatenate every document's tokens and cut them into ``block_size`` blocks (labels = inputs)."""

    def group(batch):
        flat = list(chain.from_iterable(batch["input_ids"]))
        n = len(flat) // block_size * block_size
        blocks = [flat[i:i + block_size] for i in range(0, n, block_size)]
        # position 0 is never a target (the model shifts labels by one); marking it -100 makes the
        # Trainer's token count (labels != -100), which scales the loss, the number of predicted tokens
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks],
                "labels": [[-100, *b[1:]] for b in blocks]}

    # one map batch per 2000 documents: a tail under one block is dropped per batch, as run_clm does
    return ds.map(group, batched=True, batch_size=2000, remove_columns=ds.column_names)


def prepare_splits(data_cfg, tokenizer, seed: int = 0, need_train: bool = True) -> dict:
    """Token blocks for train / validation / (test), each with ``labels`` = ``input_ids``."""
    from ..data import limit_samples, split_roles, unescape_html
    from ..metrics import check_metric_names

    check_metric_names(list(data_cfg.metrics) + [data_cfg.metric])
    raw, splits = _raw(data_cfg)
    block_size = block_size_of(data_cfg, tokenizer)
    out = {}
    for role, name, ds in split_roles(raw, splits, need_train):
        missing = [f for f in data_cfg.text_fields if f not in ds.column_names]
        if missing:
            raise LsrAdaptError(f"dataset split {name!r} lacks column(s) {missing}; it has {ds.column_names} "
                                f"(set data.text_fields)")
        blocks = group_blocks(tokenize_documents(unescape_html(ds, data_cfg), data_cfg, tokenizer), block_size)
        if len(blocks) == 0:
            raise LsrAdaptError(f"dataset split {name!r} holds fewer than {block_size} tokens, not one block of "
                                f"data.max_length; lower data.max_length or give it more text")
        out[role] = limit_samples(blocks, data_cfg, role, seed)
    return out


def _collator(tokenizer, data_cfg=None):
    # every block holds data.max_length tokens, so batches are static already (CUDA graphs need no
    # data.pad_to_max_length here)
    from transformers import default_data_collator

    return default_data_collator


def _compute_metrics(names, data_cfg=None):
    return None  # perplexity comes from the loss (_loss_metrics); no logits are kept


def _loss_metrics(loss: float) -> dict:
    from ..metrics import perplexity

    return {"perplexity": perplexity(loss)}


def make_task(name: str) -> Task:
    return Task(name, _load, prepare_splits, _collator, _compute_metrics, _synthetic, loss_metrics=_loss_metrics)
