"""predict.py's ``--eval-split``: a split the run's dataset lacks is a one-line error naming the
splits there are (generated or local data), never a split made up on the spot (issue 14 item 9)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from helpers import ROOT, run_train


def predict_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsr_adapt.predict", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), out.stderr[-3000:]
    return last


TINY = ("training.num_train_epochs=1", "data.synthetic_sizes.train=32", "data.synthetic_sizes.validation=16",
        "data.synthetic_sizes.test=16")


def test_eval_split_that_a_generated_dataset_lacks_is_an_error_not_a_new_split(tmp_path):
    run = tmp_path / "run"
    run_train(run, *TINY)
    last = one_error_line(predict_cli("--run", str(run), "--eval-split", "nosuch", "--out", str(tmp_path / "m.json")))
    assert "'nosuch'" in last and "['test', 'train', 'validation']" in last, last
    assert not (tmp_path / "m.json").exists()


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["sentence1", "sentence2", "label"])
        w.writeheader()
        w.writerows(rows)


@pytest.mark.slow  # minutes of the 2-core default budget; runs in CI's -m slow pass
def test_eval_split_on_local_data_names_the_split_and_the_splits_there_are(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"sentence1": f"the cat sat {i}", "sentence2": f"a dog ran {i}", "label": i % 2} for i in range(24)]
    for name in ("train", "validation", "extra"):
        _write(data / f"{name}.csv", rows)
    _write(data / "test.csv", [{**r, "label": -1} for r in rows])  # GLUE style: test labels hidden
    run = tmp_path / "run"
    run_train(run, "data.synthetic=false", f"data.path={data}", "training.num_train_epochs=1")

    last = one_error_line(predict_cli("--run", str(run), "--eval-split", "nosuch"))
    assert "no split 'nosuch'" in last and "['extra', 'test', 'train', 'validation']" in last, last
    last = one_error_line(predict_cli("--run", str(run), "--eval-split", "test"))
    assert "'test' has no labels" in last, last  # there, but unlabelled: that message is the true one
    ok = predict_cli("--run", str(run), "--eval-split", "extra")  # another file of the dataset: evaluated
    assert ok.returncode == 0 and '"num_examples": 24' in ok.stdout, ok.stderr[-3000:]
