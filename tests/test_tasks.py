"""More tasks and model families (issue 4): GLUE / IMDB configs, regression, MNLI matched + mismatched,
causal LMs (GPT-2, Llama) with perplexity and generation.

Independent references: metrics against textbook formulas / numpy; the metrics a run recorded
against predictions recomputed from the saved run; perplexity against a hand-written token-level
cross-entropy over the validation blocks; LoRA parameter counts against r·(in + out) per layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import compose, resolved_data, run_train
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.metrics import (
    check_metric_names,
    compute,
    higher_is_better,
    mcc,
    pearson,
    perplexity,
    spearman,
)
from lsr_adapt.tasks import get_task, task_type_of

# GLUE's official metrics (the first picks the best epoch)
GLUE = {"cola": ["mcc"], "sst2": ["accuracy"], "mrpc": ["accuracy", "f1"], "qqp": ["accuracy", "f1"],
        "stsb": ["pearson", "spearman"], "mnli": ["accuracy"], "qnli": ["accuracy"], "rte": ["accuracy"]}
TINY = ("training.num_train_epochs=1", "training.batch_size=8", "training.logging_steps=2")
SIZES = "data.synthetic_sizes={train: 48, validation: 24, test: 24}"
GPT2_DATA = ("data.synthetic_sizes={train: 192, validation: 32, test: 32}",)


# -- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*GLUE, "imdb"])
def test_text_classification_configs_compose(name):
    cfg = compose(f"data={name}")
    d = cfg.data
    assert d.name == name
    if name in GLUE:
        assert (d.path, d.subset) == ("nyu-mll/glue", name)
        assert d.metric == GLUE[name][0] and set(GLUE[name]) <= set(d.metrics)
    check_metric_names([d.metric, *d.metrics])
    assert task_type_of(d) == ("regression" if name == "stsb" else "classification")
    assert (d.num_labels, d.get("task_type")) == ((1, "regression") if name == "stsb" else
                                                  (3 if name == "mnli" else 2, "classification"))
    smoke = compose("experiment=smoke", f"data={name}", "backbone=distilbert_sst2", "adapter=lora")
    assert smoke.data.synthetic and smoke.model.tiny and smoke.data.name == name


def test_mnli_and_imdb_splits():
    mnli = compose("data=mnli").data
    assert mnli.splits.validation == "validation_matched"
    assert list(mnli.extra_eval_splits) == ["validation_mismatched"]
    imdb = compose("data=imdb").data
    assert (imdb.path, imdb.splits.train, imdb.splits.validation, imdb.splits.test) == ("stanfordnlp/imdb", "train", "test", None)
    assert (imdb.max_train_samples, imdb.max_eval_samples, imdb.sample_seed) == (10000, 1000, 42)


def test_distilbert_configs():
    for method in ("lora", "head"):
        m = compose("backbone=distilbert_sst2", f"adapter={method}").model
        assert m.name_or_path == "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
        assert (m.family, m.target_modules, m.adaptation_type) == ("distilbert", None, method)
    # null: the architecture's default, the one source of it
    from lsr_adapt.adapters import DEFAULT_TARGET_MODULES

    assert DEFAULT_TARGET_MODULES["distilbert"] == ["q_lin", "k_lin", "v_lin"]


def test_imdb_reference_experiment_configs():
    """The five reference runs as experiment files, each composing with the smoke preset."""
    want = {"raw": ("head", 0, None), "head": ("head", 15, None), "lora_r1": ("lora", 15, 1),
            "lora_r16": ("lora", 15, 16), "lora_then_head_stage1": ("lora", 10, 16)}
    for name, (method, epochs, r) in want.items():
        cfg = compose(f"experiment=imdb_distilbert/{name}")
        assert (cfg.model.adaptation_type, cfg.training.num_train_epochs, cfg.data.name) == (method, epochs, "imdb")
        assert cfg.model.name_or_path.startswith("distilbert")
        if r is not None:
            assert cfg.model.lora.r == r
        smoke = compose(f"experiment=[imdb_distilbert/{name},smoke]")
        assert smoke.model.tiny and smoke.data.synthetic and smoke.model.adaptation_type == method
    stage2 = compose("experiment=imdb_distilbert/lora_then_head_stage2", "stage1_run=/runs/stage1")
    assert (stage2.freeze_adapter, stage2.init_from, stage2.training.num_train_epochs, stage2.model.lora.r) == \
        (True, "/runs/stage1", 5, 16)
    with pytest.raises(InterpolationToMissingValueError):  # stage 2 needs stage 1's run directory
        _ = compose("experiment=imdb_distilbert/lora_then_head_stage2").init_from


def test_imdb_lora_then_head_two_stages(tmp_path):
    small = (SIZES, "training.num_train_epochs=1", "training.batch_size=8")
    with pytest.raises(LsrAdaptError, match=r"config value\(s\) stage1_run must be set"):
        run_train(tmp_path / "x", "experiment=[imdb_distilbert/lora_then_head_stage2,smoke]", *small)
    first = run_train(tmp_path / "s1", "experiment=[imdb_distilbert/lora_then_head_stage1,smoke]", *small)
    second = run_train(tmp_path / "s2", "experiment=[imdb_distilbert/lora_then_head_stage2,smoke]", *small,
                       f"stage1_run={tmp_path / 's1'}")
    assert first["adapter_params"] == 2 * 3 * 16 * (32 + 32)  # r=16 on q_lin, k_lin, v_lin in 2 layers
    assert second["metric_before_training"] == first["best_metric"]  # starts from stage 1's adapter + head
    assert second["freeze_adapter"] and second["trainable_params"] == second["head_params"] == 32 * 32 + 32 + 32 * 2 + 2


@pytest.mark.parametrize("model,data", [
    ("backbone=distilbert_sst2 adapter=lora", "imdb"), ("backbone=distilbert_sst2 adapter=head", "imdb"),
    ("backbone=gpt2 adapter=lora", "wikitext2"), ("backbone=gpt2 adapter=lsr", "text_files"),
    ("backbone=llama adapter=lora", "wikitext2"), ("model=smollm2_lora", "text_files"),
    ("backbone=whisper_small adapter=lora", "gw_synthetic"), ("model=whisper_full", "gw_disk"),
    ("backbone=whisper_small adapter=head", "gw_synthetic")])
def test_new_model_configs_compose_with_smoke(model, data):
    from lsr_adapt.smoke import TINY_CONFIGS

    cfg = compose("experiment=smoke", *model.split(), f"data={data}")
    assert cfg.model.tiny and cfg.data.synthetic and cfg.model.family in TINY_CONFIGS
    assert get_task(cfg.data).name == {"imdb": "classification", "gw_synthetic": "gw", "gw_disk": "gw"}.get(data, "causal_lm")


def test_task_type_checks():
    base = OmegaConf.to_container(compose("data=sst2").data)
    with pytest.raises(LsrAdaptError, match="unknown data.task_type 'ner'; valid choices: classification"):
        get_task(OmegaConf.create({**base, "task_type": "ner"}))
    with pytest.raises(LsrAdaptError, match="regression needs data.num_labels=1, not 2"):
        task_type_of(OmegaConf.create({**base, "task_type": "regression"}))
    with pytest.raises(LsrAdaptError, match="num_labels=1 is task_type=regression"):
        task_type_of(OmegaConf.create({**base, "num_labels": 1}))
    assert task_type_of(OmegaConf.create({**base, "task_type": None, "num_labels": 1})) == "regression"


# -- metrics ------------------------------------------------------------------------------------------
def test_metrics_against_textbook_formulas():
    rng = np.random.default_rng(0)
    pred, label = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp, tn = np.sum((pred == 1) & (label == 1)), np.sum((pred == 0) & (label == 0))
    fp, fn = np.sum((pred == 1) & (label == 0)), np.sum((pred == 0) & (label == 1))
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(pred, label) == pytest.approx(want, abs=1e-12)
    assert mcc(label, label) == pytest.approx(1.0) and mcc(1 - label, label) == pytest.approx(-1.0)
    x, y = rng.normal(size=100), rng.normal(size=100)
    y = y + x
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731 - continuous data: no ties
    assert spearman(x, y) == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1], abs=1e-12)
    # regression logits (n, 1) → the single output, not an argmax
    got = compute(["pearson", "spearman"], x[:, None], y)
    assert got["pearson"] == pytest.approx(pearson(x, y))
    assert perplexity(math.log(7.5)) == pytest.approx(7.5) and perplexity(1e4) == math.inf
    assert not higher_is_better("perplexity") and higher_is_better("mcc")
    with pytest.raises(LsrAdaptError, match="unknown metric 'bleu'; valid choices: .*perplexity"):
        check_metric_names(["bleu"])


# -- classification / regression runs -----------------------------------------------------------------
def _split_rows(cfg, split):
    from lsr_adapt.data import load_raw

    raw, splits = load_raw(resolved_data(cfg.data))
    return raw[splits.get(split, split)]


def _predicted_metrics(run_dir, rows, fields, label_field, names):
    from lsr_adapt.artifacts import load_run
    from lsr_adapt.predict import predict_logits

    run = load_run(run_dir)
    pairs = rows[fields[1]] if len(fields) > 1 else None
    with torch.no_grad():
        logits = predict_logits(run, rows[fields[0]], pairs)
    return compute(names, logits, np.asarray(rows[label_field]))


def test_stsb_regression_run_records_pearson_and_spearman(tmp_path):
    res = run_train(tmp_path, "data=stsb", SIZES, *TINY)
    assert res["task_type"] == "regression" and res["metric_name"] == "pearson"
    assert set(res["metrics_before_training"]) == {"pearson", "spearman"}
    assert set(res["test_metrics"]) == {"pearson", "spearman", "loss"}
    # roberta head: dense 32×32 + 32, out_proj 32×1 + 1 (one regression output)
    assert res["head_params"] == 32 * 32 + 32 + 32 + 1
    cfg = compose("experiment=smoke", "data=stsb", SIZES)
    rows = _split_rows(cfg, "test")
    got = _predicted_metrics(tmp_path, rows, ["sentence1", "sentence2"], "label", ["pearson", "spearman"])
    # predict re-runs the saved model in other batches (padding lengths, matmul blockings): scores off by
    # float32 reordering (~1e-6 relative); a correlation of 16 such scores moves far less than 1e-4
    assert got["pearson"] == pytest.approx(res["test_metrics"]["pearson"], abs=1e-4)
    assert got["spearman"] == pytest.approx(res["test_metrics"]["spearman"], abs=1e-4)  # ranks: same, or a tie flips
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test_metrics"] == res["test_metrics"]


def _mnli_on_disk(path):
    """A local copy in GLUE MNLI's hub layout: five splits, hidden (-1) test labels."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    from lsr_adapt.smoke import synthetic_files

    sizes = {"train": 48, "validation_matched": 24, "validation_mismatched": 20, "test_matched": 8,
             "test_mismatched": 8}
    files = synthetic_files(["premise", "hypothesis"], "label", 3, sizes, seed=3)
    features = Features({"premise": Value("string"), "hypothesis": Value("string"),
                         "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
                         "idx": Value("int32")})
    parts = {}
    for split, f in files.items():
        rows = [json.loads(line) for line in Path(f).read_text().splitlines()]
        for i, r in enumerate(rows):
            r["idx"] = i
            if split.startswith("test"):
                r["label"] = -1
        parts[split] = Dataset.from_list(rows, features=features)
    DatasetDict(parts).save_to_disk(str(path))
    return path


def test_mnli_records_matched_and_mismatched(tmp_path):
    data = _mnli_on_disk(tmp_path / "mnli")
    res = run_train(tmp_path / "run", "data=mnli", "backbone=distilbert_sst2", "adapter=lora", "data.synthetic=false",
                    f"data.path={data}", *TINY)
    assert res["task_type"] == "classification" and res["test_metrics"] is None  # test labels hidden
    mism = res["extra_eval_metrics"]["validation_mismatched"]
    assert set(mism) == {"accuracy", "loss"}
    assert set(res["extra_eval_metrics_before_training"]["validation_mismatched"]) == {"accuracy", "loss"}
    cfg = compose("data=mnli", f"data.path={data}")
    for split, recorded in [("validation_matched", res["best_metric"]), ("validation_mismatched", mism["accuracy"])]:
        got = _predicted_metrics(tmp_path / "run", _split_rows(cfg, split), ["premise", "hypothesis"], "label",
                                 ["accuracy"])
        assert got["accuracy"] == pytest.approx(recorded), split


def _imdb_dir(path, n_train=60, n_test=40):
    from lsr_adapt.smoke import synthetic_files

    files = synthetic_files(["text"], "label", 2, {"train": n_train, "test": n_test}, seed=5)
    path.mkdir()
    for split, f in files.items():
        (path / f"{split}.jsonl").write_text(Path(f).read_text())
    return path


def test_imdb_sample_is_fixed_by_sample_seed(tmp_path):
    from lsr_adapt.modeling import load_tokenizer
    from lsr_adapt.smoke import tiny_checkpoint
    from lsr_adapt.tasks.classification import _prepare_splits

    data = _imdb_dir(tmp_path / "imdb")
    tok = load_tokenizer(str(tiny_checkpoint("distilbert")))
    over = ("data=imdb", f"data.path={data}", "data.max_train_samples=20", "data.max_eval_samples=10")
    d = compose(*over).data

    def drawn(data_cfg, seed):
        s = _prepare_splits(data_cfg, tok, seed=seed)
        return {k: [tuple(x) for x in v["input_ids"]] for k, v in s.items()}

    a, b = drawn(d, 1), drawn(d, 2)
    assert a == b and (len(a["train"]), len(a["validation"])) == (20, 10) and "test" not in a
    follow = compose(*over, "data.sample_seed=null").data  # null: the sample follows the training seed
    assert drawn(follow, 1)["train"] != drawn(follow, 2)["train"]


def test_imdb_raw_model_evaluate_only(tmp_path):
    data = _imdb_dir(tmp_path / "imdb")
    res = run_train(tmp_path / "run", "experiment=[smoke,imdb_distilbert/raw]", "data.synthetic=false",
                    f"data.path={data}", "data.max_eval_samples=16")
    assert res["num_train_epochs"] == 0 and res["eval_history"] == []
    assert res["best_metric"] == res["metric_before_training"] and res["best_epoch"] == 0
    assert set(res["metrics_before_training"]) == {"accuracy", "f1"}


# -- causal LMs ---------------------------------------------------------------------------------------
def lora_count(layers, r=8):
    return sum(r * (i + o) for i, o in layers)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2_run")
    res = run_train(out, "backbone=gpt2", "adapter=lora", "data=wikitext2", "training.num_train_epochs=3",
                    "training.learning_rate=3e-2", *GPT2_DATA, "training.logging_steps=2")
    return out, res


def test_gpt2_lora_lowers_perplexity(gpt2_run):
    out, res = gpt2_run
    assert res["task_type"] == "causal_lm" and res["metric_name"] == "perplexity"
    # Conv1D c_attn 32 → 96 in 2 layers; no task head: the adapter is all that trains
    assert res["trainable_params"] == res["adapter_params"] == lora_count([(32, 96)] * 2)
    assert res["head_params"] == 0
    for h in res["eval_history"]:
        assert h["perplexity"] == pytest.approx(math.exp(h["loss"]))
    assert res["best_metric"] == min(h["perplexity"] for h in res["eval_history"])  # lower is better
    assert res["best_metric"] < 0.95 * res["metric_before_training"]
    assert res["test_metrics"]["perplexity"] == pytest.approx(math.exp(res["test_metrics"]["loss"]))
    cfg = json.loads((out / "lsr_adapt_config.json").read_text())  # beside peft's adapter_config.json
    assert (cfg["task_type"], cfg["num_labels"], cfg["trained_head"]) == ("causal_lm", 0, [])
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"  # peft's


def test_perplexity_matches_token_level_cross_entropy(gpt2_run):
    """exp(mean CE over every predicted token of the validation blocks), computed by hand."""
    from lsr_adapt.generate import load_lm_run
    from lsr_adapt.tasks.causal_lm import prepare_splits

    out, res = gpt2_run
    run = load_lm_run(out)
    cfg = compose("experiment=smoke", "backbone=gpt2", "adapter=lora", "data=wikitext2", *GPT2_DATA)
    blocks = prepare_splits(resolved_data(cfg.data), run.tokenizer, need_train=False)["validation"]
    ids = torch.tensor(blocks["input_ids"])
    labels = torch.tensor(blocks["labels"])
    assert ids.shape[1] == cfg.data.max_length and torch.equal(ids[:, 1:], labels[:, 1:])
    assert (labels[:, 0] == -100).all()
    with torch.no_grad():
        logits = run.model(input_ids=ids).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    # token-level mean NLL here vs the Trainer's per-batch means averaged: float32 sums of ~10³ token losses
    # in another order, typically √10³·eps32 ≈ 4e-6 relative; exp turns that into NLL × 4e-6 (≈ 2e-5 at NLL 5)
    assert math.exp(nll.item()) == pytest.approx(res["best_metric"], rel=1e-4)


def test_generation_merged_equals_unmerged_and_differs_from_base(gpt2_run, capsys):
    from lsr_adapt.generate import generate, load_lm_run, main

    out, _ = gpt2_run
    prompt = "bako mimi ruko"
    run = load_lm_run(out)
    adapted = generate(run, prompt, max_new_tokens=16)
    merged = generate(run, prompt, max_new_tokens=16, merged=True)
    base = generate(load_lm_run(out, adapter=False), prompt, max_new_tokens=16)
    assert adapted == merged and adapted != base
    assert len(base.split()) == 16 and len(adapted.split()) <= 16  # word-level: a word per token, EOS stops
    main(["--run", str(out), "--prompt", prompt, "--max-new-tokens", "16", "--merged"])
    assert capsys.readouterr().out.strip() == f"{prompt} {merged}".strip()
    sampled = generate(run, prompt, max_new_tokens=16, temperature=1.0, seed=1)
    assert sampled == generate(run, prompt, max_new_tokens=16, temperature=1.0, seed=1)


def test_generate_refuses_classification_runs(tmp_path, capsys):
    from lsr_adapt.generate import main

    run_train(tmp_path, "data=sst2", "training.num_train_epochs=0", SIZES)
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path), "--prompt", "x"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path}: a classification run, not a causal_lm one; "
                                               f"use python -m lsr_adapt.predict for it")


def _text_corpus(path, n_docs, seed):
    from lsr_adapt.tasks.causal_lm import synthetic_text_files

    files = synthetic_text_files({"all": n_docs}, seed=seed)
    return [json.loads(line)["text"] for line in open(files["all"])]


def test_text_files_blocks(tmp_path):
    """.txt: one document per file; .jsonl: one per row; EOS-framed, cut into full blocks."""
    from lsr_adapt.modeling import load_tokenizer
    from lsr_adapt.smoke import tiny_checkpoint
    from lsr_adapt.tasks.causal_lm import prepare_splits

    docs = _text_corpus(tmp_path, 12, seed=0)
    (tmp_path / "a.txt").write_text("\n".join(docs[:8]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[8:]))
    tok = load_tokenizer(str(tiny_checkpoint("llama")))
    d = compose("data=text_files", f"data.data_files={{train: {tmp_path / 'a.txt'}, validation: {tmp_path / 'a.txt'}}}",
                "data.max_length=16").data
    blocks = prepare_splits(d, tok)["train"]
    stream = [tok.bos_token_id, *tok.convert_tokens_to_ids(" ".join(docs[:8]).split()), tok.eos_token_id]
    assert len(blocks) == len(stream) // 16
    assert list(blocks["input_ids"][0]) == stream[:16] and list(blocks["input_ids"][-1]) == stream[(len(stream) // 16 - 1) * 16:len(stream) // 16 * 16]
    d = compose("data=text_files", f"data.data_files={{train: {tmp_path / 'b.jsonl'}, validation: {tmp_path / 'b.jsonl'}}}",
                "data.max_length=16").data
    stream = [t for doc in docs[8:] for t in [tok.bos_token_id, *tok.convert_tokens_to_ids(doc.split()), tok.eos_token_id]]
    assert [t for b in prepare_splits(d, tok)["validation"]["input_ids"] for t in b] == stream[:len(stream) // 16 * 16]
    with pytest.raises(LsrAdaptError, match="data=text_files needs data.data_files"):
        prepare_splits(compose("data=text_files").data, tok)
    (tmp_path / "c.txt").write_text(" ".join(docs[0].split()[:10]))
    short = OmegaConf.merge(d, {"data_files": {"train": str(tmp_path / "c.txt"), "validation": str(tmp_path / "c.txt")}})
    with pytest.raises(LsrAdaptError, match="split 'train' holds fewer than 16 tokens"):
        prepare_splits(short, tok)


def test_review_texts_as_documents_with_validation_held_out_of_train(tmp_path):
    """data=drug_reviews_lm's path on a local copy: a TSV review column, HTML entities decoded, 20% of
    train held out (by data.seed) as validation, the test file kept for held-out perplexity."""
    from lsr_adapt.modeling import load_tokenizer
    from lsr_adapt.smoke import tiny_checkpoint
    from lsr_adapt.tasks.causal_lm import prepare_splits

    docs = _text_corpus(tmp_path, 60, seed=0)
    header = "drugName\treview\trating\n"
    (tmp_path / "train.tsv").write_text(header + "".join(f"d\t{d} &#039;s\tpositive\n" for d in docs[:50]))
    (tmp_path / "test.tsv").write_text(header + "".join(f"d\t{d}\tnegative\n" for d in docs[50:]))
    tok = load_tokenizer(str(tiny_checkpoint("llama")))
    d = OmegaConf.merge(compose("data=drug_reviews_lm", "data.max_length=8").data, {"asset": None, "path": str(tmp_path)})
    splits = prepare_splits(d, tok)
    assert set(splits) == {"train", "validation", "test"}
    words = lambda s: sum(len(b) for b in splits[s]["input_ids"])  # noqa: E731
    assert words("validation") < words("train") / 2  # 10 of the 50 train documents, cut into full blocks
    no_holdout = OmegaConf.merge(d, {"validation_from_train": None, "splits": {"validation": "test"}})
    assert words("train") + words("validation") <= sum(len(b) for b in prepare_splits(no_holdout, tok)["train"]["input_ids"])
    test_stream = [t for doc in docs[50:] for t in [tok.bos_token_id, *tok.convert_tokens_to_ids(doc.split()), tok.eos_token_id]]
    assert [t for b in splits["test"]["input_ids"] for t in b] == test_stream[:len(test_stream) // 8 * 8]


def test_html_entities_are_decoded_in_every_text_field_when_asked():
    from datasets import Dataset

    from lsr_adapt.data import unescape_html

    ds = Dataset.from_dict({"review": ["it&#039;s &quot;fine&quot;"], "title": ["A &amp; B"], "rating": ["x&amp;"]})
    cfg = OmegaConf.create({"text_fields": ["review", "title"], "unescape_html": True})
    assert unescape_html(ds, cfg)[0] == {"review": 'it\'s "fine"', "title": "A & B", "rating": "x&amp;"}
    assert unescape_html(ds, OmegaConf.merge(cfg, {"unescape_html": False}))[0] == ds[0]


def test_llama_lora_on_local_text_files(tmp_path):
    docs = _text_corpus(tmp_path, 200, seed=0)
    (tmp_path / "train.txt").write_text("\n".join(docs[:170]))
    (tmp_path / "validation.txt").write_text("\n".join(docs[170:]))
    res = run_train(tmp_path / "run", "backbone=llama", "adapter=lora", "data=text_files", "data.synthetic=false",
                    f"data.path={tmp_path}", "training.num_train_epochs=3", "training.learning_rate=3e-2",
                    "training.logging_steps=2")
    # q_proj 32 → 32, v_proj 32 → 16 (2 key-value heads of 8), 2 layers
    assert res["trainable_params"] == res["adapter_params"] == lora_count([(32, 32), (32, 16)] * 2)
    assert res["best_metric"] < 0.95 * res["metric_before_training"]
    assert res["test_metrics"] is None


# -- a real causal LM, offline: SmolLM2-135M (GGUF from PyPI) ------------------------------------------
def _ship_log(n: int, seed: int) -> str:
    """Text in one fixed style (a ship's log), generated so train and held-out entries differ."""
    import random

    rng = random.Random(seed)
    winds = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]
    sights = ["two whales", "a merchant brig", "a flock of gulls", "floating ice", "a lighthouse", "dolphins"]
    return "\n".join(
        f"Day {rng.randint(1, 300)}. Wind from the {rng.choice(winds)} at {rng.randint(3, 30)} knots. "
        f"We sailed {rng.randint(20, 140)} miles and sighted {rng.choice(sights)}. "
        f"Crew in good health; {rng.randint(1, 9)} barrels of water remain." for _ in range(n))


@pytest.mark.slow
def test_smollm2_lora_lowers_held_out_perplexity(tmp_path):
    """~4 min on 2 busy CPU cores: 7 LoRA steps on 80 log entries, perplexity on 30 others."""
    pytest.importorskip("gguf")
    from lsr_adapt import assets
    from lsr_adapt.adapters import set_adapters_enabled
    from lsr_adapt.generate import generate, load_lm_run

    assets.fetch(["smollm2"], quiet=True)
    (tmp_path / "train.txt").write_text(_ship_log(80, seed=0))
    (tmp_path / "validation.txt").write_text(_ship_log(30, seed=1))
    res = run_train(tmp_path / "run", "model=smollm2_lora", "model.tiny=false", "data=text_files",
                    "data.synthetic=false", f"data.path={tmp_path}", "data.max_length=64",
                    "training.num_train_epochs=1", "training.batch_size=8", "training.learning_rate=3e-3")
    # LoRA r=8 on q_proj (576 → 576) and v_proj (576 → 192) in 30 layers; nothing else trains
    assert res["trainable_params"] == res["adapter_params"] == lora_count([(576, 576), (576, 192)] * 30)
    assert res["total_params"] == 134_515_008 + res["adapter_params"]
    assert res["best_metric"] < 0.7 * res["metric_before_training"], res  # measured: 25.1 → 11.5
    run = load_lm_run(tmp_path / "run")
    prompt = "Day 12. Wind from the"
    adapted = generate(run, prompt, max_new_tokens=12)
    assert generate(run, prompt, max_new_tokens=12, merged=True) == adapted
    set_adapters_enabled(run.model, False)
    assert generate(run, prompt, max_new_tokens=12) != adapted
