"""The whole composed config is checked once, before anything loads (``config_schema.validate_config``),
and a hub that cannot be reached is one line at once (``hub.require_hub``).

Each bad value is one ``LsrAdaptError`` line naming the key, the value and what is allowed; the
command-line table runs the real ``python main.py`` and checks the error contract: exit status 2,
the last stderr line ``error: ...`` naming the value, no traceback, nothing written to the run dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import CONF, ROOT, assert_one_line_error, cli, compose

from lsr_adapt.config_schema import validate_config
from lsr_adapt.errors import LsrAdaptError


def _options(group: str) -> list[str]:
    """The options of a config group (conf/data/base/ holds shared defaults, not options)."""
    base = CONF / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")
                  if p.parent.name != "base")


# -- every shipped config is valid ------------------------------------------------------------------

@pytest.mark.parametrize("group", ["backbone", "adapter", "model", "data", "experiment"])
def test_every_shipped_config_validates(group):
    """No config in conf/ uses a key the schema does not declare, or a value it refuses."""
    for option in _options(group):
        extra = ["stage1_run=/runs/stage1"] if option.endswith("stage2") else []
        validate_config(compose(f"{group}={option}", *extra))


def test_shipped_combinations_validate():
    validate_config(compose("experiment=smoke", "backbone=gpt2", "adapter=lora", "data=wikitext2"))
    validate_config(compose("experiment=smoke", "backbone=whisper_small", "adapter=lora", "data=gw_synthetic"))
    validate_config(compose("experiment=[smoke,equal_budget]", "budget.params=2048"))
    validate_config(compose("experiment=smoke", "hparams_search=optuna"))
    validate_config(compose("training.num_train_epochs=0"))  # evaluate only (imdb_distilbert/raw)
    validate_config(compose("training.checkpoint_every=25", "training.keep_checkpoints=null",
                            "training.fsdp=true", "data.max_length=null", "training.max_grad_norm=0"))


# -- one line per bad value ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["training.learning_rate=-1.0"], "training.learning_rate=-1.0: must be a number > 0"),
    (["training.learning_rate=abc"], "training.learning_rate='abc': must be a number > 0"),
    (["training.learning_rate=true"], "training.learning_rate=true: must be a number > 0"),
    (["training.learning_rate=inf"], "training.learning_rate=inf: must be a number > 0"),
    (["training.batch_size=0"], "training.batch_size=0: must be an integer >= 1"),
    (["training.batch_size=2.5"], "training.batch_size=2.5: must be an integer >= 1"),
    (["training.eval_batch_size=0"], "training.eval_batch_size=0: must be an integer >= 1"),
    (["training.gradient_accumulation_steps=0"], "training.gradient_accumulation_steps=0: must be an integer >= 1"),
    (["training.num_train_epochs=-2"], "training.num_train_epochs=-2: must be a number >= 0"),
    (["training.warmup_ratio=1.5"], "training.warmup_ratio=1.5: must be a number in [0, 1)"),
    (["training.weight_decay=-0.1"], "training.weight_decay=-0.1: must be a number >= 0"),
    (["training.max_grad_norm=-1"], "training.max_grad_norm=-1: must be a number >= 0"),
    (["training.lr_scheduler=cosinus"], "training.lr_scheduler='cosinus'; valid choices: linear, cosine, "),
    (["training.precision=fp8"], "training.precision='fp8'; valid choices: auto, fp32, bf16, fp16"),
    (["training.sampling=sorted"], "training.sampling='sorted'; valid choices: random, group_by_length"),
    (["training.nonfinite_loss=ignore"], "unknown training.nonfinite_loss 'ignore'; valid choices: stop, skip"),
    (["training.checkpoint_every=often"], "training.checkpoint_every='often'; valid choices: a positive number"),
    (["training.checkpoint_every=-5"], "training.checkpoint_every=-5; valid choices: a positive number"),
    (["training.keep_checkpoints=0"], "training.keep_checkpoints=0: must be an integer >= 1, or null"),
    (["training.resume=true"], "training.resume=true; valid choices: auto, false, or a checkpoint"),
    (["training.fsdp=yes"], "training.fsdp='yes'; valid choices: true, false"),
    (["training.seed=-1"], "training.seed=-1: must be an integer in [0, 2**32)"),
    (["training.logging_steps=0"], "training.logging_steps=0: must be an integer >= 1"),
    (["training.gradient_checkpointing=maybe"], "training.gradient_checkpointing='maybe': must be true or false"),
    (["training.callbacks=[1]"], "training.callbacks=[1]: must be a list of {_target_:"),
    (["+training.lr=1e-4"], "unknown key training.lr; valid keys: args, batch_size, callbacks, "),
    (["data.max_length=0"], "data.max_length=0: must be an integer >= 1 (tokens), or null"),
    (["data.max_train_samples=0"], "data.max_train_samples=0: must be an integer >= 1, or null"),
    (["data.num_labels=-1"], "data.num_labels=-1: must be an integer >= 0"),
    (["++data.validation_from_train=1.0"], "data.validation_from_train=1.0: must be a number in (0, 1)"),
    (["data.encoding=utf-9"], "data.encoding='utf-9': must be a Python codec name"),
    (["data.drop_unknown_labels=1"], "data.drop_unknown_labels=1: must be true or false"),
    (["data.text_fields=sentence1"], "data.text_fields='sentence1': must be a list of column names"),
    (["data.label_names=[a,b,c]"], "data.label_names=['a', 'b', 'c'] has 3 names but data.num_labels=2"),
    (["data.metric=auc"], "unknown metric 'auc'; valid choices:"),
    (["data=drug_reviews", "data.asset=drug_revues"], "data.asset='drug_revues'; valid choices: drug_reviews, or null"),
    (["++model.asset=minilm6"], "model.asset='minilm6'; valid choices: minilm, smollm2, or null"),
    (["++model.asset=drug_reviews"], "model.asset='drug_reviews'; valid choices: minilm, smollm2, or null"),
    (["data.task_type=ner"], "unknown data.task_type 'ner'; valid choices: classification"),
    (["model.lora.dropout=2"], "model.lora.dropout=2: must be a number in [0, 1)"),
    (["model.lora.r=0"], "model.lora.r=0: must be an integer >= 1"),
    (["model.lora.r=2.5"], "model.lora.r=2.5: must be an integer >= 1"),
    (["model.lora.alpha=0"], "model.lora.alpha=0: must be a number > 0"),
    (["model.lora.use_rslora=3"], "model.lora.use_rslora=3: must be true or false"),
    (["+model.lora.rank=4"], "unknown lora option(s) ['rank']; valid options: alpha, dropout, r, use_rslora"),
    (["model=roberta_lsr", "model.lsr.num_terms=0"], "model.lsr.num_terms=0: must be an integer >= 1"),
    (["model=roberta_lsr", "model.lsr.in_factors=[-4,-8]"], "model.lsr.in_factors=[-4, -8]: must be null or two "
                                                             "positive integers"),
    (["model=roberta_lsr", "model.lsr.form=tensor"], "unknown LSR form 'tensor'; valid choices: sum, product"),
    (["adapter=lora_plus", "model.lora_plus.lr_ratio=-16"], "model.lora_plus.lr_ratio=-16: must be a number > 0"),
    (["adapter=dylora", "model.dylora.eval_rank=9"], "DyLoRA eval_rank must be in 1..r=8, got 9"),
    (["adapter=dylora", "model.dylora.eval_rank=0"], "model.dylora.eval_rank=0: must be an integer in 1..r, or null"),
    (["adapter=lsr_plus", "model.lsr_plus.lr_ratio=0"], "model.lsr_plus.lr_ratio=0: must be a number > 0"),
    (["model=roberta_lsr", "model.lsr.out_factors=[4]"], "model.lsr.out_factors=[4]: must be null or two positive"),
    (["adapter=qlora", "model.qlora.blocksize=0"], "model.qlora.blocksize=0: must be an integer >= 1"),
    (["model.adaptation_type=lorax"], "unknown adaptation_type 'lorax'; valid choices: dora, "),
    (["model.target_modules=[]"], "model.target_modules=[]: must be a list of layer names"),
    (["freeze_adapter=maybe"], "freeze_adapter='maybe': must be true or false"),
    (["budget.params=0"], "budget.params=0: must be an integer >= 1"),
    (["budget.lsr_free=[rank]"], "budget.lsr_free=['rank']: must be a non-empty list of: r, num_terms, factors"),
])
def test_bad_values_are_one_line_naming_key_value_and_choices(overrides, message):
    with pytest.raises(LsrAdaptError) as e:
        validate_config(compose("experiment=smoke", *overrides))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_method_configs_check_their_own_ranges():
    """The ranges live in each method's config dataclass (validate_config only adds the key's prefix)."""
    from lsr_adapt.adapters import DyLoRAConfig, LoRAConfig, LSRConfig, LSRPlusConfig

    for make, message in [(lambda: LoRAConfig(r=0), "LoRAConfig.r=0: must be an integer >= 1"),
                          (lambda: LoRAConfig(use_rslora="yes"), "LoRAConfig.use_rslora='yes': must be true or false"),
                          (lambda: LSRConfig(dropout=1.0), "LSRConfig.dropout=1.0: must be a number in [0, 1)"),
                          (lambda: LSRPlusConfig(lr_ratio=float("inf")), "LSRPlusConfig.lr_ratio=inf: must be a number > 0"),
                          (lambda: DyLoRAConfig(eval_rank=True), "DyLoRAConfig.eval_rank=true: must be an integer in 1..r")]:
        with pytest.raises(LsrAdaptError) as e:
            make()
        assert str(e.value).startswith(message), str(e.value)
    assert LSRConfig(r=2.0, in_factors=[4.0, 8]).r == 2.0  # YAML may give integers as floats


def test_missing_values_are_named_before_anything_resolves():
    with pytest.raises(LsrAdaptError, match=r"config value\(s\) stage1_run must be set, e\.g\. stage1_run=\.\.\."):
        validate_config(compose("experiment=imdb_distilbert/lora_then_head_stage2"))


def test_validation_is_fast():
    cfg = compose("experiment=smoke")
    validate_config(cfg)  # the imports
    t0 = time.perf_counter()
    for _ in range(5):
        validate_config(cfg)
    assert (time.perf_counter() - t0) / 5 < 0.5


# -- the hub ---------------------------------------------------------------------------------------

def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: a connect is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_one_line_at_once(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from lsr_adapt import hub

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "LSR_ADAPT_HUB_CHECK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "_probed", {})
    t0 = time.perf_counter()
    with pytest.raises(LsrAdaptError) as e:
        hub.require_hub("roberta-base", "model")
    assert time.perf_counter() - t0 < 5
    line = str(e.value)
    assert line.startswith("cannot load model 'roberta-base': the Hugging Face Hub (http://127.0.0.1:")
    for advice in ("HF_HUB_OFFLINE=1", "model.name_or_path=", "data.path=", "experiment=smoke",
                   "python -m lsr_adapt.assets fetch && python main.py experiment=demo"):
        assert advice in line
    hub.require_hub(str(tmp_path), "model")  # a local path needs no hub
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.require_hub("roberta-base", "model")  # offline mode: the loaders fail fast by themselves
    assert "not in the local Hugging Face cache" in str(hub.hub_error("roberta-base", "model", OSError("x")))
    assert hub.hub_error(str(tmp_path), "model", OSError("x")) is None  # a local path's own error stands


def test_unreachable_hub_through_the_loaders(monkeypatch):
    from huggingface_hub import constants

    from lsr_adapt import hub
    from lsr_adapt.data import load_raw
    from lsr_adapt.modeling import load_classifier

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "LSR_ADAPT_HUB_CHECK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "_probed", {})
    with pytest.raises(LsrAdaptError, match="cannot load model 'no-such/model': the Hugging Face Hub"):
        load_classifier("no-such/model", 2)
    with pytest.raises(LsrAdaptError, match=r"cannot load dataset 'nyu-mll/glue': the Hugging Face Hub .*HF_HUB_OFFLINE=1"):
        load_raw(compose().data)


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, wanted", [
    (["training.learning_rate=-1.0"], "training.learning_rate=-1.0: must be a number > 0"),
    # the same messages in-process above (test_bad_values_are_one_line_...); through the CLI in -m slow
    *[pytest.param(o, w, marks=pytest.mark.slow) for o, w in [
        (["training.learning_rate=fast"], "training.learning_rate='fast': must be a number > 0"),
        (["training.batch_size=0"], "training.batch_size=0: must be an integer >= 1"),
        (["model.lora.dropout=2"], "model.lora.dropout=2: must be a number in [0, 1)"),
        (["training.lr_scheduler=cosinus"], "training.lr_scheduler='cosinus'; valid choices: linear, cosine"),
        (["training.gradient_accumulation_steps=0"], "training.gradient_accumulation_steps=0: must be an integer >= 1"),
        (["training.num_train_epochs=-2"], "training.num_train_epochs=-2: must be a number >= 0"),
        (["data.max_length=0"], "data.max_length=0: must be an integer >= 1"),
        (["data=drug_reviews", "data.asset=drug_revues"], "data.asset='drug_revues'; valid choices: drug_reviews")]],
    pytest.param(["+training.lr=1e-4"], "unknown key training.lr; valid keys:", marks=pytest.mark.slow),
])
def test_cli_bad_config_values(tmp_path, overrides, wanted):
    run_dir, other = tmp_path / "run", tmp_path / "other_run"  # a finished run beside it: never touched
    other.mkdir()
    for name in ("results.json", "adapter_config.json", "config_resolved.yaml"):
        (other / name).write_text(f"{name} of another run\n")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    proc = cli("experiment=smoke", f"hydra.run.dir={run_dir}", "training.report_to=none", *overrides, cwd=tmp_path)
    assert_one_line_error(proc, wanted, run_dir=run_dir)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


def test_cli_without_hub_fails_within_seconds_saying_what_to_do(tmp_path):
    """The default run (roberta-base, glue/mrpc from the hub) with the hub endpoint a closed local port."""
    run_dir = tmp_path / "run"
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                               "HF_DATASETS_OFFLINE", "LSR_ADAPT_HUB_CHECK")}, **env}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "training.num_train_epochs=1",
                           f"hydra.run.dir={run_dir}", "training.report_to=none"], cwd=tmp_path,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    line = assert_one_line_error(proc, "cannot load model 'FacebookAI/roberta-base'", "cannot be reached",
                                 "HF_HUB_OFFLINE=1", "experiment=smoke", "experiment=demo", run_dir=run_dir)
    assert elapsed < 30, (elapsed, line)  # process start and imports included (53 s of retries before)


def test_every_scheduler_the_schema_accepts_is_one_transformers_has():
    from transformers.trainer_utils import SchedulerType

    from lsr_adapt.config_schema import SCHEDULERS

    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}
