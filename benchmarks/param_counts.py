"""Trainable parameters of every method on RoBERTa-base (q, v targets, 2-class head), by construction.

    python benchmarks/param_counts.py            # a markdown table (the one in docs/methods.md)
    python benchmarks/param_counts.py --json     # the numbers

Builds the model on the ``meta`` device (shapes only: no download, no memory, a second or two) and
runs the real ``prepare_model`` with each method's default config from ``conf/adapter/``, so
the counts are what ``results.json`` reports. QLoRA trains exactly LoRA's parameters (its base is
only stored differently) and needs real weights to quantize, so its row is LoRA's count.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout, installed or not

from lsr_adapt.modeling import LoadedModel, head_parameter_names, prepare_model  # noqa: E402

# the method configs adapter=<name> composes (conf/adapter/<name>.yaml)
METHODS = ["full", "head", "lora", "rslora", "lora_plus", "lora_fa", "dylora", "dora", "qlora", "lsr", "lsr_plus"]


def roberta_base_config():
    from transformers import RobertaConfig

    # roberta-base's config.json values (the hub checkpoint's, not RobertaConfig's defaults)
    return RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2)


def method_config(name: str) -> tuple[str, dict]:
    """(adaptation_type, config) as ``adapter=<name>`` composes them on the default backbone (RoBERTa-base)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        model = compose(config_name="config", overrides=[f"adapter={name}"]).model
    section = model.get(model.adaptation_type)
    return str(model.adaptation_type), (OmegaConf.to_container(section, resolve=True) if section is not None else {})


def count(name: str) -> dict:
    from transformers import RobertaForSequenceClassification

    adaptation_type, cfg = method_config(name)
    if adaptation_type == "qlora":  # LoRA's trainable parameters over a 4-bit base (see module doc)
        cfg = {k: cfg[k] for k in ("r", "alpha", "dropout", "use_rslora")}
        adaptation_type = "lora"
    with torch.device("meta"):
        model = RobertaForSequenceClassification(roberta_base_config())
    head = [n for n in head_parameter_names(model) if n.startswith("classifier.")]
    loaded = LoadedModel(model, None, "roberta-base", new_param_names=head)
    counts = prepare_model(loaded, adaptation_type, cfg, ["query", "value"]).counts
    return {"method": name, **{k: counts[k] for k in ("trainable_params", "adapter_params", "head_params",
                                                       "total_params")}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [count(m) for m in METHODS]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| method | trainable | beyond the head | % of model |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_params'] - r['head_params']:,} | "
              f"{100 * r['trainable_params'] / r['total_params']:.3f} |")


if __name__ == "__main__":
    main()
