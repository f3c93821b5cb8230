"""Adapters as artifacts: save / load / predict / export / switch / continue, and bad files rejected.

Every equality is checked against an independent reference: the live model that saved the
adapter, HF peft's own ``PeftModel`` on the exported files, numpy's SVD for the truncation error,
and the metrics ``train()`` recorded for the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SMALL_RUN, run_train, tiny_batch, tiny_classifier
from safetensors.torch import save_file as safetensors_save
from tolerances import EPS32, assert_fp32_close, forward_terms, fp32_atol

from lsr_adapt.adapters import METHODS, adapter_layers, merge_adapters
from lsr_adapt.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterBank,
    adapter_tensors,
    base_fingerprint,
    fingerprint_problem,
    load_adapter,
    load_run,
    read_weights,
    save_adapter,
)
from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.modeling import prepare_model
from lsr_adapt.smoke import tiny_checkpoint

SMALL = SMALL_RUN
TARGETS = ["query", "value"]
# options a method needs on the 32-wide tiny model (bitsandbytes' CPU blocks must divide the width)
TINY_OPTIONS = {"qlora": {"blocksize": 32}}


# -- helpers ---------------------------------------------------------------------------------------
def adapted(method: str, cfg=None, seed: int = 0, targets=TARGETS):
    """A tiny classifier wrapped with ``method`` whose adapter and head hold random non-zero values."""
    loaded = tiny_classifier()
    try:
        prepare_model(loaded, method, dict(cfg or {}), targets)
    except LsrAdaptError as e:  # e.g. qlora without a usable bitsandbytes backend
        pytest.skip(f"{method} cannot be built here: {e}")
    g = torch.Generator().manual_seed(seed)
    names = {f"{ln}.{pn}" for ln, layer in adapter_layers(loaded.model).items() for pn in layer.adapter_parameters()}
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if (p.requires_grad or n in names) and p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.2)
    loaded.model.eval()
    return loaded


def save(loaded, path: Path, method: str) -> Path:
    cfg = loaded.method_config
    save_adapter(loaded.model, path, {
        "adaptation_type": method,
        "method_config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
        "base_model": "tiny-roberta", "loaded_from": str(tiny_checkpoint("roberta")),
        "num_labels": 2, "task": "test", "text_fields": ["sentence"],
    })
    return path


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits


def fresh():
    return tiny_classifier().model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_run")
    run_train(d, *SMALL)
    return d


@pytest.fixture(scope="module")
def lsr_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lsr_run")
    run_train(d, *SMALL, "model=roberta_lsr", "model.lsr.num_terms=2")
    return d


# -- save / load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_every_method(tmp_path, method):
    loaded = adapted(method, TINY_OPTIONS.get(method))
    batch = tiny_batch(loaded.tokenizer)
    want = logits(loaded.model, batch)
    save(loaded, tmp_path / "a", method)
    cfg = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert cfg["adaptation_type"] == method and cfg["base_fingerprint"]["structure"]
    model = fresh()
    load_adapter(model, tmp_path / "a")
    assert torch.equal(logits(model, batch), want)
    saved = read_weights(tmp_path / "a" / ADAPTER_WEIGHTS)
    state = model.state_dict()
    assert saved and all(torch.equal(state[n], t) for n, t in saved.items())


def test_saved_run_reproduces_training_metrics(lora_run, lsr_run):
    from lsr_adapt.predict import evaluate_split

    for run_dir in (lora_run, lsr_run):
        results = json.loads((run_dir / "results.json").read_text())
        run = load_run(run_dir)
        assert not any(p.requires_grad for p in run.model.parameters())
        assert evaluate_split(run, "validation")["metrics"][results["metric_name"]] == results["best_metric"]
        assert evaluate_split(run, "test")["metrics"]["accuracy"] == results["test_metrics"]["accuracy"]


def test_adapter_file_holds_adapter_and_head_only(lsr_run):
    cfg = json.loads((lsr_run / ADAPTER_CONFIG).read_text())
    tensors = read_weights(lsr_run / ADAPTER_WEIGHTS)
    layers = cfg["target_modules"]
    adapter = {n for n in tensors if n.rsplit(".", 1)[0] in layers}
    assert {n.rsplit(".", 1)[1] for n in adapter} == {"lsr_A1", "lsr_A2", "lsr_B1", "lsr_B2"}
    assert set(tensors) - adapter == set(cfg["trained_head"]) and all("classifier" in n for n in cfg["trained_head"])
    lsr = cfg["method_config"]  # t·r·(d₁+d₂+k₁+k₂) per 32×32 = (8·4)×(8·4) layer
    per_layer = lsr["num_terms"] * lsr["r"] * (8 + 4 + 8 + 4)
    assert sum(tensors[n].numel() for n in adapter) == len(layers) * per_layer


# -- predict -----------------------------------------------------------------------------------------
def test_predict_text_and_file(lora_run, tmp_path, capsys):
    from lsr_adapt.predict import main, predict_texts

    run = load_run(lora_run)
    rows = [{"sentence1": "bako mimi ruko", "sentence2": "bako ruko"}, {"sentence1": "teza", "sentence2": "lone fiko"}]
    want = predict_texts(run, [r["sentence1"] for r in rows], [r["sentence2"] for r in rows])
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-6 for p in want)  # float32 softmax: a few eps32
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["--run", str(lora_run), "--file", str(src), "--out", str(tmp_path / "preds.csv")])
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == "sentence1,sentence2,label,prob_0,prob_1" and len(lines) == 3
    for line, p in zip(lines[1:], want):
        cells = line.split(",")
        # the CSV prints 6 decimals: off by at most 5e-7
        assert cells[2] == p["label"] and abs(float(cells[3]) - p["probabilities"]["0"]) < 1e-6
    capsys.readouterr()
    main(["--run", str(lora_run), "--text", rows[0]["sentence1"], "--text-pair", rows[0]["sentence2"], "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["label"] == want[0]["label"] and got["probabilities"] == pytest.approx(want[0]["probabilities"])


def test_predict_regression_run_from_csv(tmp_path):
    from lsr_adapt.predict import load_run, main, predict_logits

    run_train(tmp_path / "reg", *SMALL, "data.num_labels=1", "data.task_type=regression", "data.metric=pearson", "data.metrics=[pearson]",
              "training.num_train_epochs=0")
    (tmp_path / "in.csv").write_text('sentence1,sentence2\n"bako mimi, ruko",bako ruko\nteza,lone\n')
    main(["--run", str(tmp_path / "reg"), "--file", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out.csv")])
    lines = (tmp_path / "out.csv").read_text().splitlines()
    want = predict_logits(load_run(tmp_path / "reg"), ["bako mimi, ruko", "teza"], ["bako ruko", "lone"])
    assert lines[0] == "sentence1,sentence2,score" and lines[1].startswith('"bako mimi, ruko",bako ruko,')
    # the CSV prints 6 significant digits (:.6g): off by at most 5e-6 relative
    assert [float(line.rsplit(",", 1)[1]) for line in lines[1:]] == pytest.approx(want.reshape(-1).tolist(), rel=1e-5)


def test_predict_cli_subprocess(lora_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "lsr_adapt.predict", "--run", str(lora_run), "--text", "bako mimi",
                           "--text-pair", "bako"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    label, probs = proc.stdout.strip().splitlines()[-2:]
    assert label in ("label: 0", "label: 1") and probs.startswith("probabilities: 0=")


# -- export ------------------------------------------------------------------------------------------
def test_merged_export_loads_without_lsr_adapt(lora_run, lsr_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from lsr_adapt.adapters.base import AdapterLayer
    from lsr_adapt.export import export

    for run_dir in (lora_run, lsr_run):
        out = tmp_path / f"merged_{run_dir.name}"
        report = export(run_dir, "merged", out)
        live = load_run(run_dir)
        batch = tiny_batch(live.tokenizer, n=6)
        want = logits(live.model, batch)
        # merged (W₀+ΔW)x vs live W₀x + ΔW·x on the export's probe batch (inputs like ours): the forward's
        # sums in another order, plus ΔW's (≤ 32 terms on the tiny model)
        terms = forward_terms(live.model, batch) + 32
        assert report["exact"] and report["probe_max_abs_logit_diff"] <= fp32_atol(want, terms)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
        assert "auto_map" not in json.loads((out / "config.json").read_text())
        plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert type(plain).__module__.startswith("transformers.")
        assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
        assert_fp32_close(logits(plain, batch), want, terms=terms)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merged_export_every_method(tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    from lsr_adapt.export import export

    loaded = adapted(method, TINY_OPTIONS.get(method))
    batch = tiny_batch(loaded.tokenizer, n=6)
    want = logits(loaded.model, batch)
    save(loaded, tmp_path / "a", method)
    export(tmp_path / "a", "merged", tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert all(type(m).__module__.startswith(("torch.", "transformers.")) for m in plain.modules())
    # merged (W₀+ΔW)x vs the live adapter: the forward's sums in another order, plus ΔW's (≤ 32 terms)
    assert_fp32_close(logits(plain, batch), want, terms=forward_terms(plain, batch) + 32)


def _peft_model(out: Path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint("roberta")), num_labels=2)
    return peft.PeftModel.from_pretrained(base, str(out)).eval()


PEFT_EXACT = {"lora": ("lora", {"r": 4, "alpha": 8}), "rslora": ("lora", {"r": 4, "alpha": 8, "use_rslora": True}),
              "dora": ("dora", {"r": 4, "alpha": 8}), "lora_plus": ("lora_plus", {"r": 4}),
              "lora_fa": ("lora_fa", {"r": 4}), "dylora": ("dylora", {"r": 4})}


@pytest.mark.parametrize("method,cfg", PEFT_EXACT.values(), ids=PEFT_EXACT)
def test_peft_export_equals_live(tmp_path, method, cfg):
    from lsr_adapt.export import export

    loaded = adapted(method, cfg)
    batch = tiny_batch(loaded.tokenizer, n=6)
    want = logits(loaded.model, batch)
    save(loaded, tmp_path / "a", method)
    export(tmp_path / "a", "peft", tmp_path / "peft")
    peft_cfg = json.loads((tmp_path / "peft" / ADAPTER_CONFIG).read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["use_dora"] == (method == "dora")
    assert peft_cfg["modules_to_save"] == ["classifier"]
    peft_model = _peft_model(tmp_path / "peft")  # peft's forward: the same sums in its own order
    assert_fp32_close(logits(peft_model, batch), want, terms=forward_terms(loaded.model, batch) + 32)


def test_peft_export_refuses_a_dylora_below_full_rank(tmp_path):
    from lsr_adapt.export import export

    loaded = adapted("dylora", {"r": 4, "eval_rank": 2})  # serves B[:, :2]·A[:2]: not the stored rank-4 LoRA
    save(loaded, tmp_path / "a", "dylora")
    with pytest.raises(LsrAdaptError, match="is not exactly a LoRA; use --format lora --rank R"):
        export(tmp_path / "a", "peft", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


@pytest.mark.parametrize("use_dora,use_rslora", [(False, False), (False, True), (True, False)],
                         ids=["lora", "rslora", "dora"])
def test_peft_import_equals_peft(tmp_path, use_dora, use_rslora):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(3)
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint("roberta")), num_labels=2)
    pm = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=TARGETS,
                                                    init_lora_weights=False, use_dora=use_dora, use_rslora=use_rslora))
    pm.save_pretrained(tmp_path / "p")
    tok = tiny_classifier().tokenizer
    batch = tiny_batch(tok, n=6)
    want = logits(pm, batch)
    model = fresh()
    meta = load_adapter(model, tmp_path / "p")
    assert meta["adaptation_type"] == ("dora" if use_dora else "lora")
    assert_fp32_close(logits(model, batch), want, terms=forward_terms(pm, batch) + 32)  # another order of sums


def test_lokr_export_is_exact_for_single_term_lsr(tmp_path):
    from lsr_adapt.export import export

    loaded = adapted("lsr", {"r": 2, "num_terms": 1})
    batch = tiny_batch(loaded.tokenizer, n=6)
    want = logits(loaded.model, batch)
    save(loaded, tmp_path / "a", "lsr")
    export(tmp_path / "a", "lokr", tmp_path / "lokr")
    files = read_weights(tmp_path / "lokr" / ADAPTER_WEIGHTS)
    # 32 = 8·4: W₁ (8×8) is kept as rank-2 factors (r < 8/2), W₂ (4×4) whole (r ≥ 4/2), as peft builds them
    assert any(k.endswith("lokr_w1_a") for k in files) and any(k.endswith("lokr_w2") for k in files)
    peft_model = _peft_model(tmp_path / "lokr")  # peft's LoKr forward: the same sums in its own order
    assert_fp32_close(logits(peft_model, batch), want, terms=forward_terms(loaded.model, batch) + 32)


def test_svd_lora_export_error(tmp_path, capsys):
    from lsr_adapt.export import main

    low = adapted("lsr", {"r": 2, "num_terms": 1})  # ΔW = s·(B₁A₁)⊗(B₂A₂) has rank ≤ r² = 4
    batch = tiny_batch(low.tokenizer, n=6)
    save(low, tmp_path / "low", "lsr")
    main(["--run", str(tmp_path / "low"), "--format", "lora", "--rank", "4", "--out", str(tmp_path / "low4")])
    assert "relative Frobenius error" in capsys.readouterr().out
    report = json.loads((tmp_path / "low4" / "export_report.json").read_text())
    # rank 4 holds ΔW exactly (float64 SVD): what is left is rounding the two factors to float32, each
    # entry of B·A a sum of 4 products: ≤ 2·4·(eps32/2) = 4.8e-7 of ‖ΔW‖
    assert report["exact"] is False and report["relative_error"] < 1e-6
    assert_fp32_close(logits(_peft_model(tmp_path / "low4"), batch), logits(low.model, batch),
                      terms=forward_terms(low.model, batch) + 32)  # peft's order of sums

    full = adapted("lsr", {"r": 2, "num_terms": 8})  # rank up to 32: truncation loses energy
    save(full, tmp_path / "full", "lsr")
    main(["--run", str(tmp_path / "full"), "--format", "lora", "--rank", "3", "--out", str(tmp_path / "full3")])
    report = json.loads((tmp_path / "full3" / "export_report.json").read_text())
    tail2 = total2 = 0.0
    for name, layer in adapter_layers(full.model).items():  # Eckart–Young: error = singular values past R
        s = np.linalg.svd(layer.delta_weight().detach().double().numpy(), compute_uv=False)
        want = np.sqrt((s[3:] ** 2).sum() / (s**2).sum())
        # the float64 SVD is exact to ~1e-15; the float32-stored factors move the residual by at most
        # their rounding, a few eps32 of ‖ΔW‖: relative to the residual, 4·eps32/want
        assert report["layers"][name]["relative_error"] == pytest.approx(want, rel=4 * EPS32 / want)
        tail2, total2 = tail2 + (s[3:] ** 2).sum(), total2 + (s**2).sum()
    overall = np.sqrt(tail2 / total2)
    assert report["relative_error"] == pytest.approx(overall, rel=4 * EPS32 / overall) and overall > 0.05


def test_inexact_exports_are_refused(lsr_run, tmp_path, capsys):
    from lsr_adapt.export import main

    for fmt, words in (("lokr", "single-term LSR"), ("peft", "--format lora --rank R")):
        with pytest.raises(SystemExit) as e:
            main(["--run", str(lsr_run), "--format", fmt, "--out", str(tmp_path / fmt)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and words in err
        assert not (tmp_path / fmt).exists()
    with pytest.raises(SystemExit):
        main(["--run", str(lsr_run), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert "valid choices: lokr, lora, merged, peft" in capsys.readouterr().err


# -- bad files ---------------------------------------------------------------------------------------
@pytest.fixture()
def saved(tmp_path):
    loaded = adapted("lora", {"r": 4})
    return save(loaded, tmp_path / "good", "lora")


def _expect_error(path, *words, model=None):
    model = model or fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LsrAdaptError) as e:
        load_adapter(model, path)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not adapter_layers(model)  # nothing was changed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return msg


def test_truncated_and_corrupt_weights(saved):
    weights = saved / ADAPTER_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _expect_error(saved, str(weights), "truncated or corrupt")
    weights.write_bytes(b"\xff" * 8 + data[8:])
    _expect_error(saved, str(weights), "truncated or corrupt")
    weights.write_bytes(data)
    tensors = read_weights(weights)
    tensors["classifier.dense.bias"][0] = float("nan")
    safetensors_save(tensors, str(weights))
    _expect_error(saved, str(weights), "does not match the checksum recorded when it was saved")
    cfg = json.loads((saved / ADAPTER_CONFIG).read_text())  # NaN written with a matching checksum
    (saved / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}))
    _expect_error(saved, str(weights), "tensor classifier.dense.bias holds NaN or infinite values")
    (saved / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    weights.write_bytes(data)
    (saved / ADAPTER_CONFIG).write_text("{not json")
    _expect_error(saved, str(saved / ADAPTER_CONFIG), "corrupt JSON")


def test_missing_files_and_unknown_method(saved):
    cfg = json.loads((saved / ADAPTER_CONFIG).read_text())
    (saved / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "adaptation_type": "nope"}))
    _expect_error(saved, str(saved / ADAPTER_CONFIG), "unknown adaptation_type 'nope'", "valid choices", "lora")
    (saved / ADAPTER_WEIGHTS).unlink()
    _expect_error(saved, str(saved / ADAPTER_WEIGHTS), "missing file")
    _expect_error(saved / "nowhere", "no such adapter directory")


def test_shape_and_fingerprint_mismatch(saved):
    cfg = json.loads((saved / ADAPTER_CONFIG).read_text())
    (saved / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "method_config": {**cfg["method_config"], "r": 8}}))
    _expect_error(saved, str(saved / ADAPTER_WEIGHTS), "shape mismatch", "file [4, 32], model [8, 32]")
    (saved / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    other = fresh()
    with torch.no_grad():
        other.roberta.encoder.layer[1].output.dense.weight.mul_(1.5)  # another base (e.g. a fine-tuned one)
    _expect_error(saved, "base model's weights differ", model=other)
    bert = tiny_classifier("bert").model
    _expect_error(saved, "base model's layers differ", model=bert)
    model = fresh()
    load_adapter(model, saved)  # the unchanged base still loads


def test_fingerprint_tolerates_precision_only():
    model = fresh()
    fp = base_fingerprint(model, exclude=[n for n in model.state_dict() if n.startswith("classifier")])
    head = [n for n in model.state_dict() if n.startswith("classifier")]
    assert fingerprint_problem(fresh().to(torch.bfloat16), fp, head) is None
    assert fingerprint_problem(fresh().to(torch.float16), fp, head) is None
    other = fresh()
    with torch.no_grad():
        other.roberta.embeddings.word_embeddings.weight.add_(0.01)
    assert "differ" in fingerprint_problem(other, fp, head)


class Pickled:
    """Unpickling this would run code of the file's choosing; weights_only refuses it."""


def test_legacy_bin_uses_weights_only(saved):
    tensors = read_weights(saved / ADAPTER_WEIGHTS)
    (saved / ADAPTER_WEIGHTS).unlink()
    torch.save(tensors, saved / "adapter_model.bin")
    model = fresh()
    load_adapter(model, saved)
    assert torch.equal(model.state_dict()["classifier.out_proj.weight"], tensors["classifier.out_proj.weight"])
    torch.save({"x": Pickled()}, saved / "adapter_model.bin")  # an arbitrary pickled object
    _expect_error(saved, "adapter_model.bin", "unreadable legacy weights file")


def test_export_cli_bad_run_writes_nothing(saved, tmp_path, capsys):
    from lsr_adapt.export import main

    data = (saved / ADAPTER_WEIGHTS).read_bytes()
    (saved / ADAPTER_WEIGHTS).write_bytes(data[:100])
    out = tmp_path / "exports" / "merged"
    with pytest.raises(SystemExit) as e:
        main(["--run", str(saved), "--format", "merged", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and "truncated" in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


# -- task switching ----------------------------------------------------------------------------------
def test_switching_gives_each_adapters_own_outputs(tmp_path):
    specs = {"a": ("lora", {"r": 4, "alpha": 8}, 1), "b": ("lora", {"r": 4, "alpha": 8}, 2),
             "c": ("lora", {"r": 2, "alpha": 4}, 3), "d": ("lsr", {"r": 2, "num_terms": 2}, 4)}
    batch = tiny_batch(tiny_classifier().tokenizer, n=6)
    want = {}
    for name, (method, cfg, seed) in specs.items():
        loaded = adapted(method, cfg, seed=seed)
        want[name] = logits(loaded.model, batch)
        save(loaded, tmp_path / name, method)
    model = fresh()
    bank = AdapterBank(model)
    for name in specs:
        bank.load(tmp_path / name, name=name)
    assert bank.names == sorted(specs) and bank.active == "d"
    assert not any(k.startswith("_lsr") for k in vars(model))  # the bank is the caller's object, not the model's
    bank.activate("a")
    layers_a = adapter_layers(model)
    bank.activate("b")  # same method and shapes: tensors swapped in place, layers kept
    assert all(adapter_layers(model)[n] is layer for n, layer in layers_a.items())
    for name in ["b", "a", "c", "d", "a", "d", "b"]:
        bank.activate(name)
        assert torch.equal(logits(model, batch), want[name]), name
    merge_adapters(model)  # merged serving: unmerge, swap, merge again
    for name in ["a", "c", "d", "b"]:
        bank.activate(name)
        assert all(layer.merged for layer in adapter_layers(model).values())
        assert_fp32_close(logits(model, batch), want[name], terms=forward_terms(model, batch) + 32)  # merged
    with pytest.raises(LsrAdaptError, match="no adapter named 'e' is loaded; valid choices: a, b, c, d"):
        bank.activate("e")


# -- continue training -------------------------------------------------------------------------------
def test_init_from_then_head_only(lora_run, tmp_path):
    first = json.loads((lora_run / "results.json").read_text())
    res = run_train(tmp_path / "stage2", *SMALL, f"init_from={lora_run}", "freeze_adapter=true",
                    "training.learning_rate=0.05")
    assert res["metric_before_training"] == first["best_metric"]  # starts from the saved adapter + head
    assert res["init_from"]["head_loaded"] and res["freeze_adapter"]
    assert res["trainable_params"] == res["head_params"]
    old = adapter_tensors(lora_run)  # under the model's names (a LoRA run dir stores peft's)
    new = adapter_tensors(tmp_path / "stage2")
    assert set(old) == set(new)
    assert res["best_metric"] >= res["metric_before_training"]  # the start counts as epoch 0
    head_moved = res["best_epoch"] > 0
    for n in old:  # the adapter stayed as saved; the head is the best epoch's (the start's if none beat it)
        assert torch.equal(old[n], new[n]) == ("lora_" in n or not head_moved), n


def test_init_from_checks_the_config(lora_run, tmp_path):
    with pytest.raises(LsrAdaptError, match="r: saved 8, configured 4"):
        run_train(tmp_path / "x", *SMALL, f"init_from={lora_run}", "model.lora.r=4")
    with pytest.raises(LsrAdaptError, match="saved adapter is 'lora'"):
        run_train(tmp_path / "y", *SMALL, f"init_from={lora_run}", "model=roberta_lsr")


def test_init_from_on_a_task_with_other_labels(lora_run, tmp_path):
    res = run_train(tmp_path / "z", *SMALL, f"init_from={lora_run}", "data.num_labels=3", "training.num_train_epochs=0")
    assert res["init_from"]["head_loaded"] is False  # 3 labels now: the adapter carries over, the head starts fresh
    old = adapter_tensors(lora_run)
    new = adapter_tensors(tmp_path / "z")
    assert all(torch.equal(old[n], new[n]) for n in old if "lora_" in n)
    assert new["classifier.out_proj.weight"].shape[0] == 3
