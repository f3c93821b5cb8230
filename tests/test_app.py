"""The Hydra app end to end: composed configs, training runs, results.json, CLI errors, data loaders."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose, run_train

from lsr_adapt import LsrAdaptError
from lsr_adapt.cli import flags_first

RESULT_KEYS = {
    "adaptation_type", "model_name", "task", "trainable_params", "adapter_params", "head_params", "total_params",
    "percent_trainable", "metric_name", "metric_before_training", "eval_history", "best_metric", "best_epoch",
    "test_metrics", "train_runtime_s", "peak_memory_mb", "examples_per_s",
}

# The README's commands, verbatim after `python main.py`; a --multirun sweep composes as each of its jobs.
README_COMMANDS = [
    "",
    "adapter=lsr",
    "backbone=minilm adapter=lsr",
    "--multirun adapter=lora,lsr",
    "model=roberta_lsr",
    "model.lora.r=16",
    "model=roberta_lsr model.lsr.num_terms=8 model.lsr.r=4",
    "data=sst2",
    "model.lora.r=16 training.num_train_epochs=10 training.learning_rate=1e-4",
    "--multirun model=roberta_lora,roberta_lsr",
    "model=roberta_lora --multirun model.lora.r=4,8,16,32",
    "model=roberta_lsr --multirun model.lsr.r=1,2,4,8",
    "model=roberta_lsr --multirun model.lsr.num_terms=4,8,16,32",
    "--multirun model=roberta_lora,roberta_lsr training.learning_rate=1e-4,5e-4,1e-3",
]


def expand_sweep(command: str) -> list[list[str]]:
    """Every job a (basic-launcher) sweep would run, as override lists."""
    args = [a for a in flags_first(command.split()) if not a.startswith("-")]
    choices = [[f"{a.split('=')[0]}={v}" for v in a.split("=", 1)[1].split(",")] for a in args]
    return [list(job) for job in itertools.product(*choices)]


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_commands_compose(command):
    for overrides in expand_sweep(command):
        cfg = compose(*overrides)
        assert cfg.model.adaptation_type in ("lora", "lsr")
        assert cfg.data.name in ("mrpc", "sst2")
        # the same job also composes as an offline smoke run
        compose("experiment=smoke", *overrides)


def test_defaults_follow_the_lora_recipe():
    cfg = compose()
    assert cfg.model.name_or_path == "FacebookAI/roberta-base"
    assert cfg.model.target_modules is None  # RoBERTa's default: q and v (the one source of it)
    from lsr_adapt.adapters import DEFAULT_TARGET_MODULES

    assert DEFAULT_TARGET_MODULES["roberta"] == ["query", "value"]
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (8, 8)
    assert cfg.training.num_train_epochs == 20 and cfg.training.batch_size == 16
    assert cfg.training.warmup_ratio == 0.06 and cfg.training.lr_scheduler == "linear"
    assert cfg.training.learning_rate == pytest.approx(4e-4)
    assert compose("data=sst2").training.learning_rate == pytest.approx(5e-4)
    assert compose("data=sst2", "training.learning_rate=1e-4").training.learning_rate == pytest.approx(1e-4)
    assert cfg.data.metric == "accuracy"


def test_flags_first():
    assert flags_first(["model=a", "--multirun", "x=1,2"]) == ["--multirun", "model=a", "x=1,2"]
    assert flags_first(["a=1", "--cfg", "job", "-m", "b=2"]) == ["--cfg", "job", "-m", "a=1", "b=2"]
    assert flags_first(["--info", "defaults", "a=1"]) == ["--info", "defaults", "a=1"]


@pytest.mark.parametrize("model", ["roberta_lora", "roberta_lsr"])
def test_smoke_training_writes_results_and_lowers_loss(tmp_path, model):
    results = run_train(tmp_path, f"model={model}")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(results) >= RESULT_KEYS
    assert results["adaptation_type"] == model.split("_")[1]
    assert len(results["eval_history"]) == 6
    assert [e["epoch"] for e in results["eval_history"]] == list(range(1, 7))
    best = max(results["eval_history"], key=lambda e: e["accuracy"])
    assert results["best_metric"] == best["accuracy"] and results["best_epoch"] == best["epoch"]
    assert results["trainable_params"] == results["adapter_params"] + results["head_params"]
    assert set(results["test_metrics"]) >= {"accuracy", "f1"}
    # training lowers the loss: the validation loss of the first epoch vs the best of the run
    first, losses = results["eval_history"][0]["loss"], [e["loss"] for e in results["eval_history"]]
    assert min(losses) < first
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "config_resolved.yaml").exists()
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(t.numel() for t in saved.values()) == results["trainable_params"]


def test_the_best_epoch_is_what_gets_saved(tmp_path):
    """The saved weights are the best epoch's, not the last one's."""
    from lsr_adapt.artifacts import artifact_from_dir
    from lsr_adapt.data import prepare_splits
    from lsr_adapt.modeling import load_classifier, prepare_model
    from lsr_adapt.sources import resolve_sources
    from lsr_adapt.tasks import get_task

    results = run_train(tmp_path, "training.num_train_epochs=3")
    cfg = compose("experiment=smoke")
    sources = resolve_sources(cfg.model, cfg.data, get_task(cfg.data))
    loaded = load_classifier(sources.model_path, 2)
    prepare_model(loaded, "lora", None, ["query", "value"])
    # the file's tensors under lsr-adapt's names (a LoRA run dir holds peft's), put in by hand
    state = artifact_from_dir(tmp_path).tensors
    missing = loaded.model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys and state
    splits = prepare_splits(sources.data, loaded.tokenizer)
    val = splits["validation"]
    from transformers import DataCollatorWithPadding

    batch = DataCollatorWithPadding(loaded.tokenizer)([val[i] for i in range(len(val))])
    labels = batch.pop("labels")
    with torch.no_grad():
        acc = (loaded.model.eval()(**batch).logits.argmax(-1) == labels).float().mean().item()
    assert acc == pytest.approx(results["best_metric"])


def test_tiny_training_loop_lowers_training_loss():
    """Adapters learn: a few AdamW steps on one batch cut its loss (LoRA and both LSR forms)."""
    from helpers import tiny_batch, tiny_classifier

    from lsr_adapt.modeling import prepare_model

    for method, cfg in [("lora", {}), ("lsr", {}), ("lsr", {"form": "product"})]:
        loaded = tiny_classifier()
        prepare_model(loaded, method, cfg, ["query", "value"])
        model = loaded.model.eval()  # no dropout: the loss curve is deterministic
        batch = tiny_batch(loaded.tokenizer, n=8)
        labels = torch.tensor([0, 1] * 4)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        torch.manual_seed(0)
        losses = []
        for _ in range(60):
            loss = model(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.3 * losses[0], (method, cfg, losses[0], losses[-1])


def test_evaluate_only_mode(tmp_path):
    results = run_train(tmp_path, "training.num_train_epochs=0")
    assert results["eval_history"] == [] and results["best_epoch"] == 0
    assert results["best_metric"] == results["metric_before_training"]


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    run_train(tmp_path, "training.num_train_epochs=1")
    with pytest.raises(LsrAdaptError, match="already holds a finished run"):
        run_train(tmp_path, "training.num_train_epochs=1")


# -- data loaders ---------------------------------------------------------------------------------

def _glue_like(n: int, labelled: bool = True):
    from datasets import Dataset

    return Dataset.from_dict({
        "sentence1": [f"kaba koko mimi {i}" for i in range(n)],
        "sentence2": [f"koko kaba {i}" for i in range(n)],
        "label": [i % 2 if labelled else -1 for i in range(n)],
        "idx": list(range(n)),
    })


def test_local_save_to_disk_dataset_in_glue_format(tmp_path):
    """The hub's GLUE layout saved locally, with GLUE's unlabelled (-1) test split."""
    from datasets import DatasetDict

    from lsr_adapt.data import prepare_splits
    from lsr_adapt.smoke import tiny_tokenizer

    DatasetDict(train=_glue_like(32), validation=_glue_like(8), test=_glue_like(8, labelled=False)) \
        .save_to_disk(str(tmp_path / "mrpc"))
    cfg = compose(f"data.path={tmp_path / 'mrpc'}").data
    splits = prepare_splits(cfg, tiny_tokenizer())
    assert set(splits) == {"train", "validation"}  # the -1 test split is skipped
    assert len(splits["train"]) == 32 and splits["train"][0]["labels"] == 0
    assert {"input_ids", "attention_mask", "labels"} <= set(splits["train"].column_names)


def test_local_tsv_files_and_string_labels(tmp_path):
    from lsr_adapt.data import prepare_splits
    from lsr_adapt.smoke import tiny_tokenizer

    d = tmp_path / "sst"
    d.mkdir()
    for split, n in [("train", 10), ("validation", 4)]:
        rows = ["sentence\tlabel"] + [f"kaba koko {i}\t{'pos' if i % 2 else 'neg'}" for i in range(n)]
        (d / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    cfg = compose("data=sst2", f"data.path={d}", "data.label_names=[neg,pos]").data
    splits = prepare_splits(cfg, tiny_tokenizer())
    assert splits["train"]["labels"] == [0, 1] * 5
    cfg = compose("data=sst2", f"data.path={d}").data
    with pytest.raises(LsrAdaptError, match="labels in column 'label' are strings; set data.label_names"):
        prepare_splits(cfg, tiny_tokenizer())


def test_missing_columns_are_named(tmp_path):
    from datasets import DatasetDict

    from lsr_adapt.data import prepare_splits
    from lsr_adapt.smoke import tiny_tokenizer

    DatasetDict(train=_glue_like(4), validation=_glue_like(4)).save_to_disk(str(tmp_path / "d"))
    cfg = compose(f"data.path={tmp_path / 'd'}", "data.text_fields=[question,sentence]").data
    with pytest.raises(LsrAdaptError, match=r"lacks column\(s\) \['question', 'sentence'\]; it has \['sentence1'"):
        prepare_splits(cfg, tiny_tokenizer())


# -- the command line -----------------------------------------------------------------------------

def _main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # a two-job sweep through the CLI (~9 s of the 2-core default budget)
def test_cli_multirun_gives_each_job_its_own_dir(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _main("experiment=smoke", "training.num_train_epochs=1", "--multirun", "model=roberta_lora,roberta_lsr",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    assert {json.loads(p.read_text())["adaptation_type"] for p in results} == {"lora", "lsr"}
    assert all(any((p.parent / "runs").iterdir()) for p in results)  # TensorBoard events, in each job's dir
    assert not (tmp_path / "runs").exists()  # and nowhere else


@pytest.mark.parametrize("overrides, message", [
    (["model.adaptation_type=lorax"], "error: unknown adaptation_type 'lorax'; valid choices: dora, "),
    pytest.param(["model.target_modules=[qkv]"], "error: target_modules ['qkv'] matched no Linear layer",
                 marks=pytest.mark.slow),
    # these two reach the model (the factors are checked against its layers): seconds more each
    pytest.param(["model=roberta_lsr", "model.lsr.in_factors=[5,5]"],
                 "error: LSR factors [5, 5] do not multiply to the input dim 32", marks=pytest.mark.slow),
    pytest.param(["model=roberta_lsr", "model.lsr.r=9"], "error: LSR rank r=9 exceeds the smallest Kronecker factor",
                 marks=pytest.mark.slow),
    (["+model.lora.rank=4"], "error: unknown lora option(s) ['rank']; valid options: alpha, dropout, r, use_rslora"),
    # the in-process schema tests (tests/test_validation.py) cover these messages; the CLI in -m slow
    pytest.param(["data.metric=auc"], "error: unknown metric 'auc'; valid choices:", marks=pytest.mark.slow),
    pytest.param(["training.sampling=sorted"], "error: training.sampling='sorted'; valid choices: random, group_by_length",
                 marks=pytest.mark.slow),
])
def test_cli_bad_input_is_one_line_and_leaves_no_results(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = _main("experiment=smoke", f"hydra.run.dir={run_dir}", "training.report_to=none", *overrides, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists()


def test_cli_unknown_config_choice_lists_the_options(tmp_path):
    proc = _main("model=roberta_lorra", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'model/roberta_lorra'" in proc.stderr
    assert "roberta_lora" in proc.stderr and "roberta_lsr" in proc.stderr
    # the groups as well, as Hydra composes them for the CLI: never a silent fallback to a default
    with pytest.raises(Exception, match="Could not find 'adapter/lorra'"):
        compose("adapter=lorra")
    with pytest.raises(Exception, match="Could not find 'backbone/robbie'"):
        compose("backbone=robbie")


def test_a_continued_run_never_saves_worse_than_its_start(tmp_path):
    """Stage 2 of "LoRA, then head only" starts from stage 1's weights: they count as epoch 0."""
    stage1 = run_train(tmp_path / "s1", "training.num_train_epochs=2")
    stage2 = run_train(tmp_path / "s2", f"init_from={tmp_path / 's1'}", "freeze_adapter=true",
                       "training.num_train_epochs=2", "training.learning_rate=5.0")  # a wild lr wrecks the head
    assert stage2["metric_before_training"] == pytest.approx(stage1["best_metric"])
    assert stage2["best_metric"] >= stage2["metric_before_training"]
    if stage2["best_epoch"] == 0:
        from lsr_adapt.artifacts import artifact_from_dir

        # under the model's names (a LoRA run dir stores peft's)
        a, b = (artifact_from_dir(tmp_path / d).tensors for d in ("s1", "s2"))
        head = [k for k in a if k.startswith("classifier.")]
        assert head and all(torch.equal(a[k], b[k]) for k in head)


def test_group_by_length_sampling_reaches_the_trainer(tmp_path):
    """training.sampling=group_by_length: the Trainer draws similar-length batches (less padding)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from lsr_adapt.training.arguments import sampling_args as _sampling_args

    data = Dataset.from_dict({"input_ids": [[1] * n for n in range(1, 65)], "labels": [0] * 64})
    for how, grouped in [("group_by_length", True), ("random", False)]:
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True,
                                 report_to=[], **_sampling_args(how))
        trainer = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=data)
        assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler) == grouped
