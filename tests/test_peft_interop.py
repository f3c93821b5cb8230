"""Runs that HF peft opens as they are, and exports at the exact rank (issue 20, part 5).

A LoRA / rsLoRA / DoRA run dir is a peft directory: ``PeftModel.from_pretrained(base, run_dir)``
gives the logits of the model lsr-adapt rebuilds from the same dir (``load_run``, itself checked
against the metrics recorded at training time), and peft's own config class reads its
``adapter_config.json`` without a warning. ``export --format lora`` of an LSR adapter takes the
exact rank t·r² by default and says so; a smaller ``--rank`` names the exact one and the error.
The references are peft's own model classes, numpy's SVD and the recorded metrics.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch
from helpers import SMALL_RUN, cli, run_train, tiny_batch, tiny_classifier
from tolerances import EPS32, assert_fp32_close, forward_terms

from lsr_adapt.adapters import adapter_layers
from lsr_adapt.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LSR_ADAPT_CONFIG,
    load_run,
    save_adapter,
    save_run_adapter,
)
from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.modeling import prepare_model
from lsr_adapt.smoke import tiny_checkpoint

peft = pytest.importorskip("peft")

# peft's LoRA forward is base(x) + s·B(A(x)), lsr-adapt's the same sum in another order (and DoRA's
# norm another way round): the same maths, so the logits differ by float32 summation order along the
# network, plus the head's two matmuls (32 wide)
HEAD_TERMS = 32


def _base():
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)  # a head other than the run's: modules_to_save must bring the trained one
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint("roberta")), num_labels=2)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    return model.eval()(**batch).logits


def _check_run_dir_opens_in_peft(run_dir, *, use_rslora: bool, use_dora: bool) -> None:
    from lsr_adapt.predict import evaluate_split

    results = json.loads((run_dir / "results.json").read_text())
    with warnings.catch_warnings():  # peft warns about any key of adapter_config.json it does not know
        warnings.simplefilter("error")
        config = peft.PeftConfig.from_pretrained(str(run_dir))
    assert isinstance(config, peft.LoraConfig) and config.task_type == "SEQ_CLS"
    assert (config.r, config.use_rslora, config.use_dora) == (results["method_config"]["r"], use_rslora, use_dora)
    assert list(config.modules_to_save) == ["classifier"]

    run = load_run(run_dir)  # lsr-adapt's own loader reads its record beside peft's config
    assert (run_dir / LSR_ADAPT_CONFIG).is_file() and run.adapter_config["tensor_names"] == "peft"
    assert sorted(config.target_modules) == sorted(adapter_layers(run.model))
    # the model lsr-adapt rebuilds is the one training measured
    assert evaluate_split(run, "validation")["metrics"][results["metric_name"]] == results["best_metric"]

    batch = tiny_batch(run.tokenizer, n=6)
    want = _logits(run.model, batch)
    model = peft.PeftModel.from_pretrained(_base(), str(run_dir))
    assert_fp32_close(_logits(model, batch), want, terms=forward_terms(run.model, batch) + HEAD_TERMS)
    # the serving recipe of docs/artifacts.md: fold the adapter in, a plain transformers model remains
    merged = model.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert_fp32_close(_logits(merged, batch), want, terms=forward_terms(run.model, batch) + HEAD_TERMS)


@pytest.mark.slow  # a training run each (~20 s on 2 cores); test_lora_family_adapter_dirs_open_in_peft is the fast check
@pytest.mark.parametrize("model, use_rslora, use_dora", [("model=roberta_lora", False, False),
                                                         ("adapter=rslora", True, False),
                                                         ("adapter=dora", False, True)])
def test_lora_rslora_and_dora_run_dirs_open_in_peft(tmp_path, model, use_rslora, use_dora):
    run_train(tmp_path, *SMALL_RUN, model)
    _check_run_dir_opens_in_peft(tmp_path, use_rslora=use_rslora, use_dora=use_dora)


@pytest.mark.parametrize("method, cfg", [("lora", {"r": 4}), ("lora", {"r": 4, "use_rslora": True}),
                                         ("dora", {"r": 4})])
def test_lora_family_adapter_dirs_open_in_peft(tmp_path, method, cfg):
    """What train() saves (save_run_adapter), without the training: peft's model from the dir gives
    the live model's logits, and lsr-adapt loads the same dir back bit for bit."""
    from lsr_adapt.artifacts import load_adapter

    live = _saved(tmp_path, method, cfg, run_layout=True)
    assert (tmp_path / LSR_ADAPT_CONFIG).is_file()
    with warnings.catch_warnings():  # peft warns about any key of adapter_config.json it does not know
        warnings.simplefilter("error")
        config = peft.PeftConfig.from_pretrained(str(tmp_path))
    assert (config.use_rslora, config.use_dora) == (bool(cfg.get("use_rslora")), method == "dora")
    batch = tiny_batch(live.tokenizer, n=6)
    want = _logits(live.model, batch)
    model = peft.PeftModel.from_pretrained(_base(), str(tmp_path))
    assert_fp32_close(_logits(model, batch), want, terms=forward_terms(live.model, batch) + HEAD_TERMS)
    ours = tiny_classifier().model
    load_adapter(ours, tmp_path)
    assert torch.equal(_logits(ours, batch), want)  # the same tensors, the same layers: bit for bit


def test_a_damaged_peft_layout_dir_is_refused(tmp_path):
    """The checksum in lsr_adapt_config.json covers the peft-named weights file."""
    from lsr_adapt.artifacts import load_adapter

    _saved(tmp_path, "lora", {"r": 4}, run_layout=True)
    data = bytearray((tmp_path / ADAPTER_WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # a flipped bit in the last tensor's data: the file still parses
    (tmp_path / ADAPTER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(LsrAdaptError, match="does not match the checksum"):
        load_adapter(tiny_classifier().model, tmp_path)


# -- export --format lora: the exact rank by default ----------------------------------------------------
def _saved(tmp_path, method: str, cfg: dict, run_layout: bool = False):
    """A tiny classifier with ``method`` whose adapter and head hold random non-zero values, saved
    by ``save_adapter`` (lsr-adapt's layout) or, ``run_layout``, as train() saves a run's adapter."""
    loaded = tiny_classifier()
    prepare_model(loaded, method, dict(cfg), ["query", "value"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    loaded.model.eval()
    mcfg = loaded.method_config
    save = save_run_adapter if run_layout else save_adapter
    save(loaded.model, tmp_path, {
        "adaptation_type": method, "method_config": dataclasses.asdict(mcfg),
        "base_model": "tiny-roberta", "loaded_from": str(tiny_checkpoint("roberta")), "num_labels": 2,
        "task": "test", "task_type": "classification", "text_fields": ["sentence"]})
    return loaded


def test_export_lora_takes_the_exact_rank_of_an_lsr_adapter(tmp_path, capsys):
    from lsr_adapt.export import main

    live = _saved(tmp_path / "lsr", "lsr", {"r": 2, "num_terms": 5})  # rank ≤ t·r² = 20 < 32 = min(out, in)
    assert not (tmp_path / "lsr" / LSR_ADAPT_CONFIG).exists()  # LSR has no peft LoRA form: lsr-adapt's layout
    main(["--run", str(tmp_path / "lsr"), "--format", "lora", "--out", str(tmp_path / "exact")])
    out = capsys.readouterr().out
    assert "rank 20 SVD = the exact rank of its ΔW, t·r² = 5·2²" in out, out
    report = json.loads((tmp_path / "exact" / "export_report.json").read_text())
    assert report["rank"] == report["exact_rank"] == 20
    # rank 20 holds ΔW exactly (float64 SVD, ~1e-15); what is left is rounding B and A to float32:
    # each entry of B·A a sum of 20 products whose two factors carry eps32/2 each: ≤ 20·eps32 of ‖ΔW‖
    assert report["relative_error"] <= 20 * EPS32, report["relative_error"]
    assert f"relative Frobenius error {report['relative_error']:.3e}" in out
    batch = tiny_batch(live.tokenizer, n=6)
    exported = peft.PeftModel.from_pretrained(_base(), str(tmp_path / "exact"))
    assert_fp32_close(_logits(exported, batch), _logits(live.model, batch),
                      terms=forward_terms(live.model, batch) + HEAD_TERMS)

    main(["--run", str(tmp_path / "lsr"), "--format", "lora", "--rank", "4", "--out", str(tmp_path / "r4")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r4" / "export_report.json").read_text())
    assert "rank 4 SVD, below the exact rank 20 (t·r² = 5·2²; omit --rank for it)" in out, out
    assert f"relative Frobenius error {report['relative_error']:.3e}" in out and report["relative_error"] > 0.05


def test_export_lora_of_dora_needs_a_rank(tmp_path, capsys):
    from lsr_adapt.export import main

    _saved(tmp_path / "dora", "dora", {"r": 4})
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path / "dora"), "--format", "lora", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "--format lora needs --rank R" in err and "no low-rank bound" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a training run and the CLI (~40 s on 2 cores)
def test_export_lora_of_a_trained_lsr_run_through_the_cli(tmp_path):
    run_train(tmp_path / "run", *SMALL_RUN, "model=roberta_lsr", "model.lsr.num_terms=3")
    cfg = json.loads((tmp_path / "run" / ADAPTER_CONFIG).read_text())
    assert cfg["format"] == "lsr-adapt" and "peft_type" not in cfg  # LSR keeps lsr-adapt's layout
    r = cfg["method_config"]["r"]
    proc = cli("--run", str(tmp_path / "run"), "--format", "lora", "--out", str(tmp_path / "out"),
               module="lsr_adapt.export")
    assert proc.returncode == 0, proc.stderr[-3000:]
    exact = min(3 * r * r, 32)
    assert f"rank {exact} SVD = the exact rank of its ΔW" in proc.stdout, proc.stdout
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["relative_error"] <= exact * EPS32  # float32 rounding of the factors, as above
