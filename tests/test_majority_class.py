"""results.json's majority_class (issue 25): what always predicting the training split's commonest
label scores on validation and test, from the labels of the files a real run reads."""

from __future__ import annotations

import json

import pytest
from helpers import cli


def _write(path, labels):  # words of the tiny test tokenizer (lsr_adapt.smoke)
    path.write_text("sentence,label\n" + "".join(f"kaba koko {i},{y}\n" for i, y in enumerate(labels)))


@pytest.mark.slow  # a real training run through the CLI (~15 s alone, ~50 s on busy cores)
def test_a_run_records_the_majority_class_of_its_training_split(tmp_path):
    """Train 18 × 1 / 12 × 0, so label 1; validation holds 4 of 10 ones (0.4: the minority there,
    yet still train's majority, chosen without looking at validation), test 6 of 8 (0.75)."""
    files = {"train": [1] * 18 + [0] * 12, "validation": [0, 1] * 4 + [0] * 2, "test": [1] * 6 + [0] * 2}
    for split, labels in files.items():
        _write(tmp_path / f"{split}.csv", labels)
    out = tmp_path / "run"
    proc = cli("experiment=smoke", "data=sst2", "data.synthetic=false", f"data.path={tmp_path}",
               "training.num_train_epochs=1", "training.batch_size=8", "logger=none", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((out / "results.json").read_text())["majority_class"]
    assert recorded == {"label": 1, "validation": 4 / 10, "test": 6 / 8}


def test_majority_class_is_trains_commonest_label_and_none_where_it_means_nothing():
    """Counted by hand: train 3 × 2, 3 × 0 (a tie goes to the lowest id, 0), 1 × 1; validation holds
    two zeros of five. No train split (an evaluation-only run) or a regression task: None."""
    from datasets import Dataset

    from lsr_adapt.training.results import majority_class

    splits = {"train": Dataset.from_dict({"labels": [2, 0, 2, 1, 0, 2, 0]}),
              "validation": Dataset.from_dict({"labels": [0, 1, 0, 2, 2]})}
    assert majority_class("classification", splits) == {"label": 0, "validation": 2 / 5}
    assert majority_class("classification", {"validation": splits["validation"]}) is None
    assert majority_class("regression", splits) is None
