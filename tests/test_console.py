"""Output a person can read (issue 20, part 7): a run's console has no transformers LOAD REPORT table
for what is meant (a fresh head, a pooler the checkpoint lacks or the class leaves unused), one INFO
line saying what was initialised, a warning for anything else; no bitsandbytes kernel warning on a
run that does not use bitsandbytes; logged metrics printed as numbers."""

from __future__ import annotations

import ast
import logging
import re

import pytest
from helpers import SMALL_RUN, cli


def _logged_dicts(text: str) -> list[dict]:
    """The Trainer's printed log dicts (``{'loss': ..., 'epoch': ...}``) in console output."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{'") and line.endswith("}"):
            out.append(ast.literal_eval(line))
    return out


@pytest.mark.slow  # a whole smoke run: ~10 s alone, more on a shared machine
def test_a_smoke_run_prints_no_load_report_no_bitsandbytes_warning_and_numeric_metrics(tmp_path):
    proc = cli("experiment=smoke", *SMALL_RUN, "training.logging_steps=2", f"hydra.run.dir={tmp_path / 'run'}",
               "training.report_to=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "LOAD REPORT" not in console and "MISSING" not in console, console[-3000:]
    assert "gemm_4bit_forward" not in console and "bitsandbytes" not in console, console[-3000:]
    # one line says what started fresh: the tiny RoBERTa checkpoint has no classification head
    fresh = [line for line in console.splitlines() if "initialised fresh" in line]
    assert len(fresh) == 1 and "classifier.dense" in fresh[0] and "classifier.out_proj" in fresh[0], fresh
    logs = _logged_dicts(console)
    assert any("loss" in d for d in logs) and any("eval_accuracy" in d for d in logs), console[-3000:]
    for d in logs:
        assert all(not isinstance(v, str) for v in d.values()), d  # {'loss': 0.79}, not {'loss': '0.79'}


@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny BERT checkpoint (base model only, as sentence-transformers ship one) in ``tmp_path``."""
    import torch
    from transformers import BertConfig, BertModel

    from lsr_adapt.smoke import TINY_CONFIGS, tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), **TINY_CONFIGS["bert"]), add_pooling_layer=False)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == "lsr_adapt.modeling"]


def test_a_fresh_head_and_pooler_are_one_info_line(tiny_bert, caplog):
    from lsr_adapt.modeling import load_classifier

    with caplog.at_level(logging.INFO):
        load_classifier(str(tiny_bert), 2)
    info, warnings = _records(caplog, logging.INFO), _records(caplog, logging.WARNING)
    fresh = [m for m in info if "initialised fresh" in m]
    assert len(fresh) == 1 and "bert.pooler.dense" in fresh[0] and "classifier" in fresh[0], info
    assert warnings == [] and not any("LOAD REPORT" in r.getMessage() for r in caplog.records)


def test_missing_base_weights_still_warn(tiny_bert, caplog):
    """What is not meant (a base weight the checkpoint lacks) is still reported, one line."""
    from safetensors.torch import load_file, save_file

    from lsr_adapt.modeling import load_classifier

    weights = tiny_bert / "model.safetensors"
    state = load_file(weights)
    dropped = next(k for k in state if "encoder.layer.1.attention.self.query.weight" in k)
    del state[dropped]
    save_file(state, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.INFO):
        load_classifier(str(tiny_bert), 2)
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "base weights missing" in warnings[0], warnings
    assert re.search(r"encoder\.layer\.1\.attention\.self\.query\.weight", warnings[0]), warnings


def test_the_bitsandbytes_kernel_warning_is_held_back_and_only_that():
    from lsr_adapt import modeling

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger(modeling.BNB_LOGGER)
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        logger.warning("another bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another bitsandbytes warning"]
    assert any("no kernels" in m for m in modeling._HoldBnbKernelWarning.held)  # given back to a QLoRA run


def test_the_assets_command_prints_no_runpy_warning():
    """``python -m lsr_adapt.assets`` once printed runpy's "found in sys.modules ... unpredictable
    behaviour" warning: the package's import had already imported the module it runs."""
    proc = cli("list", module="lsr_adapt.assets")
    assert proc.returncode == 0 and "RuntimeWarning" not in proc.stderr, proc.stderr
