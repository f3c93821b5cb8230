"""Offline stand-ins for the smoke preset: tiny random-init checkpoints and small synthetic data.

Both are written to disk in the formats users have (a HF checkpoint directory, JSON-lines data
files) and then loaded by the ordinary loaders, so the smoke preset exercises the real code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from .distributed import barrier, is_main_process
from .errors import LsrAdaptError
from .iofiles import publish_dir

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
_SYLLABLES = ["ba", "ko", "mi", "ru", "te", "za", "lo", "ne", "fi", "gu", "pa", "sho", "vi", "da", "ke"]
# A fixed pseudo-word vocabulary: readable, deterministic, and fully covered by the tiny tokenizer.
WORDS = [a + b for a in _SYLLABLES for b in _SYLLABLES][:200]

# Tiny configs per architecture: a few hundred thousand parameters, seconds per epoch on 2 cores.
TINY_CONFIGS = {
    "roberta": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=130, type_vocab_size=1, initializer_range=0.3,
                    eos_token_id=2),
    "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=128, pad_token_id=0),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
                       pad_token_id=0),
    # causal LMs (tasks/causal_lm.py): token ids of the tiny tokenizer; the LM head is tied to the
    # input embedding (as in GPT-2 and SmolLM2), so the saved base model is the whole LM. A wide
    # init: with the default 0.02 the frozen tied head caps every logit near 0, pinning the
    # perplexity at the vocabulary size whatever the adapter learns
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2,
                 pad_token_id=0, initializer_range=0.1),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1),
    # GW detection (tasks/gw.py) uses the encoder only; 64 positions = up to 128 log-mel frames
    "whisper": dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                    decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=80,
                    max_source_positions=64, max_target_positions=64, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, decoder_start_token_id=1, init_std=0.2),
}


def cache_dir() -> Path:
    root = os.environ.get("LSR_ADAPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lsr_adapt")
    return Path(root)


def generated_sample(kind: str, key, build) -> Path:
    """The cache directory of one generated sample, built once (``build(tmp_dir)`` writes its files)
    and published whole: ``<cache>/synthetic/<kind>-<digest>``, the digest of ``key``, which lists
    everything that generates the sample (so a changed setting is a new directory, never stale rows)."""
    digest = hashlib.sha1(json.dumps([kind, key], sort_keys=True).encode()).hexdigest()[:12]
    return publish_dir(build, cache_dir() / "synthetic" / f"{kind}-{digest}", if_exists="keep")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=128,
    )


def tiny_checkpoint(family: str) -> Path:
    """A local checkpoint of a tiny random-init base model (no task head) of the given architecture."""
    if family not in TINY_CONFIGS:
        raise LsrAdaptError(f"no tiny smoke model for family {family!r}; valid choices: {', '.join(TINY_CONFIGS)}")

    def build(tmp: Path):
        import torch
        from transformers import AutoConfig, AutoModel

        tokenizer = tiny_tokenizer()
        config = AutoConfig.for_model(family, vocab_size=len(tokenizer), **TINY_CONFIGS[family])
        # its own seed, without moving the caller's RNG: a run that builds the cache must draw the
        # same adapter init and dropout masks as one that finds it built
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            AutoModel.from_config(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out = cache_dir() / "tiny-models" / family
    # under torchrun, transformers' save_pretrained writes weights on rank 0 only: a rank ≠ 0 would
    # publish a checkpoint without them. Rank 0 builds; the others wait for it.
    if is_main_process():
        publish_dir(build, out, if_exists="keep")
    barrier()
    return out


def synthetic_files(text_fields, label_field: str, num_labels: int, sizes: dict[str, int], seed: int = 0,
                    label_values=None) -> dict[str, str]:
    """JSON-lines train/validation/test files in a task's format with a signal a tiny model can learn.

    One text field: each class has its own marker words among random filler. Two text fields: the
    second text copies a label-dependent share of the first (paraphrase / entailment style).
    ``num_labels == 1`` makes a regression target in [0, 5] (STS-B style) from that share.
    """
    def build(tmp: Path):
        rng = random.Random(seed)
        n_cls = max(num_labels, 2)
        markers = [WORDS[10 * c: 10 * c + 10] for c in range(n_cls)]
        filler = WORDS[100:]
        for split, n in sizes.items():
            with open(tmp / f"{split}.jsonl", "w") as f:
                for _ in range(n):
                    f.write(json.dumps(_example(rng, text_fields, label_field, num_labels, n_cls, markers,
                                                filler, label_values)) + "\n")

    out = generated_sample("rows", [list(text_fields), label_field, num_labels, sizes, seed, label_values], build)
    return {split: str(out / f"{split}.jsonl") for split in sizes}


def _example(rng, text_fields, label_field, num_labels, n_cls, markers, filler, label_values):
    c = rng.randrange(n_cls)
    if len(text_fields) == 1:
        words = rng.choices(filler, k=rng.randint(6, 14)) + rng.choices(markers[c], k=3)
        rng.shuffle(words)
        row = {text_fields[0]: " ".join(words)}
        if num_labels == 1:
            row[label_field] = 5.0 * c
            return row
    else:
        # paraphrase / entailment style: the second text copies a label-dependent share of the
        # first and carries the class's marker words, so a tiny model learns it in seconds
        first = rng.choices(filler, k=rng.randint(8, 14))
        share = c / (n_cls - 1) if num_labels > 1 else rng.random()
        second = [w if rng.random() < share else rng.choice(filler) for w in first]
        second += rng.choices(markers[c if num_labels > 1 else round(share)], k=3)
        rng.shuffle(second)
        row = {text_fields[0]: " ".join(first), text_fields[1]: " ".join(second)}
        if num_labels == 1:
            row[label_field] = round(5.0 * share, 3)
            return row
    row[label_field] = label_values[c] if label_values else c
    return row
