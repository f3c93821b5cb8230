"""The Trainer's whole surface: any ``TrainingArguments`` field from ``training.args``, checked before
anything loads, and the stock transformers callbacks (``EarlyStoppingCallback``) through the CLI."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT, SMALL_RUN, assert_one_line_error, cli

RUN = ["experiment=smoke", "logger=none", *SMALL_RUN]  # 6 optimizer steps an epoch
ENV = {"PYTHONPATH": str(ROOT / "tests")}


@pytest.mark.parametrize("arg, words", [
    ("training.args.optimm=adafactor", ["unknown key training.args.optimm", "did you mean optim"]),
    pytest.param("training.args.optim=nope", ["training.args.optim='nope'", "valid choices", "adafactor"],
                 marks=pytest.mark.slow),
    pytest.param("training.args.max_steps=many", ["training.args.max_steps='many'", "must be a int"],
                 marks=pytest.mark.slow),
    pytest.param("training.args.learning_rate=1", ["training.args.learning_rate=1", "training.learning_rate"],
                 marks=pytest.mark.slow),
    pytest.param("training.args.metric_for_best_model=bleu", ["metric_for_best_model=bleu", "accuracy, f1, loss"],
                 marks=pytest.mark.slow),
])
def test_a_bad_trainer_argument_is_one_line_before_anything_loads(tmp_path, arg, words):
    run = tmp_path / "run"
    assert_one_line_error(cli(*RUN, arg, f"hydra.run.dir={run}"), *words)
    assert not run.exists()


@pytest.mark.slow  # two short runs (~25 s)
def test_any_trainer_field_and_early_stopping_work_from_the_config(tmp_path):
    # Adafactor and max_steps: 4 steps, so the one evaluation falls inside epoch 1
    run = tmp_path / "adafactor"
    done = cli(*RUN, "training.num_train_epochs=3", "training.args.optim=adafactor", "training.args.max_steps=4",
               "training.callbacks=[{_target_:faults.RequireOptimizer,name:Adafactor}]", f"hydra.run.dir={run}",
               env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((run / "results.json").read_text())["eval_history"]
    assert [(e["epoch"], e["step"]) for e in history] == [(1, 4)]

    # EarlyStoppingCallback on the chosen metric: an improvement of more than 1.0 in loss never
    # comes, so the second epoch's evaluation stops the run (patience 1) out of 5 epochs
    run = tmp_path / "early"
    done = cli(*RUN, "training.num_train_epochs=5", "training.args.metric_for_best_model=loss",
               "training.callbacks=[{_target_:transformers.EarlyStoppingCallback,early_stopping_patience:1,"
               "early_stopping_threshold:1.0}]", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [e["epoch"] for e in json.loads((run / "results.json").read_text())["eval_history"]] == [1, 2]
