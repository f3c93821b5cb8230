"""``sources.py``: the offline stand-ins (``model.tiny``, ``data.synthetic``) and the PyPI assets are
resolved to real paths once, when a run starts, and the loaders read nothing else. The references are
independent of the resolver: the generators called directly (``smoke.synthetic_files``,
``gw_data.generate``), the composed config as written, and what the run recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from helpers import ROOT, compose, run_train
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from lsr_adapt.data import load_raw
from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.smoke import synthetic_files, tiny_checkpoint
from lsr_adapt.sources import TINY_LABEL, resolve_data, resolve_sources, synthetic_parts
from lsr_adapt.tasks import get_task
from lsr_adapt.tasks.gw_data import GWParams, generate

SMALL = ("data.synthetic_sizes.train=8", "data.synthetic_sizes.validation=4", "data.synthetic_sizes.test=4")


def _resolve(cfg):
    return resolve_sources(cfg.model, cfg.data, get_task(cfg.data))


def test_a_smoke_config_resolves_to_a_checkpoint_dir_and_files_on_disk():
    cfg = compose("experiment=smoke", *SMALL)
    sources = _resolve(cfg)
    assert sources.model_path == str(tiny_checkpoint("roberta")) and Path(sources.model_path, "config.json").is_file()
    assert sources.model_name == f"{cfg.model.name_or_path}{TINY_LABEL}"
    data = sources.data
    assert not data.synthetic and data.asset is None and data.path is None
    # the files are the generator's own, called directly with the configured splits and data.seed
    expected = synthetic_files(list(cfg.data.text_fields), cfg.data.label_field, int(cfg.data.num_labels),
                               {"train": 8, "validation": 4, "test": 4}, seed=int(cfg.data.seed))
    assert dict(data.data_files) == expected and all(Path(f).is_file() for f in expected.values())
    with pytest.raises(ReadonlyConfigError):  # what the phases read, as the validated sections are
        data.max_length = 1
    # the configured section is untouched: the run's record says what the user asked for
    assert cfg.data.synthetic is True and cfg.data.get("data_files") is None
    again = _resolve(cfg)  # generated once: a second run reads the same files
    assert dict(again.data.data_files) == expected
    rows = {split: Path(f).read_text() for split, f in expected.items()}
    shutil.rmtree(Path(expected["train"]).parent)  # the cache may be deleted (docs/tasks.md): built anew,
    rebuilt = _resolve(cfg).data.data_files  # the same rows at the same place
    assert {split: Path(f).read_text() for split, f in rebuilt.items()} == rows


def test_a_section_that_names_files_already_is_handed_on_as_it_is(tmp_path):
    cfg = compose(f"data.path={tmp_path}")
    sources = _resolve(cfg)
    assert sources.data is cfg.data
    assert sources.model_path == sources.model_name == str(cfg.model.name_or_path)  # a hub id: loaded as named


def test_extra_evaluation_splits_are_generated_at_seeds_of_their_own():
    cfg = compose("experiment=smoke", "data=mnli", *SMALL)
    assert synthetic_parts(cfg.data) == [({"train": 8, "validation_matched": 4, "test_matched": 4}, 0),
                                         ({"validation_mismatched": 4}, 1)]
    files = dict(resolve_data(cfg.data, get_task(cfg.data)).data_files)
    rows = {split: Path(f).read_text() for split, f in files.items()}
    assert set(rows) == {"train", "validation_matched", "test_matched", "validation_mismatched"}
    assert rows["validation_mismatched"] != rows["validation_matched"]  # not a copy of the validation rows


def test_gw_stand_in_data_is_a_save_to_disk_dir_of_what_the_generator_gives():
    over = ("data.sample_rate=2048", "data.duration=2.0", "data.waveform=numpy", "data.synthetic_sizes.train=4",
            "data.synthetic_sizes.validation=2", "data.synthetic_sizes.test=2")
    cfg = compose("experiment=smoke", "backbone=whisper_small", "data=gw_synthetic", *over)
    data = resolve_data(cfg.data, get_task(cfg.data))
    assert data.data_files is None and not data.synthetic
    saved = load_from_disk(data.path)
    assert set(saved) == {"train", "validation", "test"}
    params = GWParams(sample_rate=2048, duration=2.0, waveform="numpy")
    for split, n in (("train", 4), ("validation", 2)):
        ref = generate(params, n, seed=0, split=split)
        for field in ("h1_timeseries", "l1_timeseries", "labels", "injection_snr"):
            np.testing.assert_array_equal(np.asarray(saved[split][field]), ref[field])  # float32 kept bit for bit
    other = resolve_data(OmegaConf.merge(cfg.data, {"seed": 1}), get_task(cfg.data))
    assert other.path != data.path  # the cache is keyed by what generates the data


def test_loaders_refuse_a_stand_in_or_asset_that_was_not_resolved():
    with pytest.raises(LsrAdaptError, match=r"data.synthetic=True is not resolved to files: .*resolve_data"):
        load_raw(compose("experiment=smoke").data)
    gw = compose("experiment=smoke", "backbone=whisper_small", "data=gw_synthetic").data
    with pytest.raises(LsrAdaptError, match="data.synthetic=True is not resolved"):
        get_task(gw).prepare_splits(gw, None)
    with pytest.raises(LsrAdaptError, match="data.asset=drug_reviews is not resolved"):
        load_raw(compose("data=drug_reviews").data)


def test_an_unknown_data_asset_is_one_line_naming_the_assets_there_are():
    """Refused by validation first (tests/test_validation.py); a section that skipped it, here too."""
    cfg = compose("data=drug_reviews")
    bad = OmegaConf.merge(cfg.data, {"asset": "drug_revues"})
    with pytest.raises(LsrAdaptError, match=r"unknown data.asset 'drug_revues'; valid choices: drug_reviews"):
        resolve_data(bad, get_task(bad))


def test_predict_reads_the_sample_training_generated_for_an_extra_split(tmp_path):
    """The recorded extra-split metric is reproduced by ``predict --eval-split`` on that split: the
    finished run's recorded (unresolved) data config resolves to the very rows training evaluated."""
    run = tmp_path / "run"
    res = run_train(run, "data=mnli", "training.num_train_epochs=1", "data.synthetic_sizes.train=32",
                    "data.synthetic_sizes.validation=16", "data.synthetic_sizes.test=16")
    recorded = res["extra_eval_metrics"]["validation_mismatched"]
    out = subprocess.run([sys.executable, "-m", "lsr_adapt.predict", "--run", str(run), "--eval-split",
                          "validation_mismatched", "--out", str(tmp_path / "m.json")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["num_examples"] == 16
    assert got["metrics"]["accuracy"] == recorded["accuracy"]  # the same 16 rows: k/16 compares exactly
    assert "synthetic: true" in (run / "config_resolved.yaml").read_text()  # the record keeps what was configured
