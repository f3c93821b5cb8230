"""Data is checked after loading and before training: unreadable files, empty splits, missing text,
labels that are missing, unknown or out of range. Each problem is one line naming the file (and the
values and row counts); rows are dropped only on request (``data.drop_unknown_labels=true``), and
then counted out loud."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import assert_one_line_error, cli, compose

from lsr_adapt.errors import LsrAdaptError


def write_split_files(d: Path, rows: dict[str, list[str]], header: str = "sentence,label", ext: str = "csv",
                      encoding: str = "utf-8") -> Path:
    """``<d>/<split>.<ext>`` with a header and the given rows (``None`` rows: an empty file)."""
    d.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        text = "" if lines is None else "\n".join([header, *lines]) + "\n"
        (d / f"{split}.{ext}").write_bytes(text.encode(encoding))
    return d


GOOD = [f"kaba koko {i},{i % 2}" for i in range(8)]


def prepare(d: Path, *overrides: str):
    from lsr_adapt.data import prepare_splits
    from lsr_adapt.smoke import tiny_tokenizer

    return prepare_splits(compose("data=sst2", f"data.path={d}", *overrides).data, tiny_tokenizer())


# -- files -----------------------------------------------------------------------------------------

def test_empty_header_only_and_undecodable_files_name_the_file(tmp_path):
    d = write_split_files(tmp_path / "empty", {"train": None, "validation": GOOD})
    with pytest.raises(LsrAdaptError, match=rf"^data file {d / 'train.csv'} is empty$"):
        prepare(d)
    d = write_split_files(tmp_path / "header", {"train": GOOD, "validation": []})
    with pytest.raises(LsrAdaptError, match=rf"^data file {d / 'validation.csv'} has a header but no rows$"):
        prepare(d)
    d = write_split_files(tmp_path / "latin", {"train": ["café crème,1", *GOOD], "validation": GOOD},
                          encoding="latin-1")
    with pytest.raises(LsrAdaptError) as e:
        prepare(d)
    assert str(e.value) == (f"data file {d / 'train.csv'} is not valid utf-8 (byte 0xe9 at offset 18); set "
                            f"data.encoding to the file's encoding, e.g. data.encoding=latin-1 (or cp1252, utf-16)")
    splits = prepare(d, "data.encoding=latin-1")  # the option reaches the loader
    assert len(splits["train"]) == 9


def test_an_empty_split_names_the_split_and_its_source(tmp_path):
    from datasets import Dataset, DatasetDict

    empty = Dataset.from_dict({"sentence": [], "label": []})
    full = Dataset.from_dict({"sentence": ["a b", "c d"], "label": [0, 1]})
    DatasetDict(train=full, validation=empty).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(LsrAdaptError, match=rf"^dataset split 'validation' \({tmp_path / 'd'}\) is empty: it has no rows$"):
        prepare(tmp_path / "d")


def test_missing_text_is_refused_naming_the_column_and_rows(tmp_path):
    d = write_split_files(tmp_path / "d", {"train": [",1", ",0", *GOOD], "validation": GOOD})
    with pytest.raises(LsrAdaptError, match=r"^dataset split 'train' \(data file .*train.csv\): 2 of 10 row\(s\) have no "
                                            r"text in column 'sentence'"):
        prepare(d)


# -- labels ----------------------------------------------------------------------------------------

def test_integer_labels_out_of_range_name_the_values_and_rows(tmp_path):
    d = write_split_files(tmp_path / "d", {"train": [*GOOD, "a b,5", "c d,5", "e f,-3"], "validation": GOOD})
    with pytest.raises(LsrAdaptError) as e:
        prepare(d)
    assert str(e.value) == (f"dataset split 'train' (data file {d / 'train.csv'}): 3 of 11 row(s) have label values "
                            f"[5, -3] outside 0..1 (data.num_labels=2) in column 'label'; fix them or data.num_labels, "
                            f"or set data.drop_unknown_labels=true to drop those rows")


def test_missing_labels_are_refused(tmp_path):
    d = write_split_files(tmp_path / "d", {"train": [*GOOD, "a b,"], "validation": GOOD})
    with pytest.raises(LsrAdaptError, match=r"1 of 9 row\(s\) have no label in column 'label'"):
        prepare(d)
    splits = prepare(d, "data.drop_unknown_labels=true")
    assert sorted(set(splits["train"]["labels"])) == [0, 1] and len(splits["train"]) == 8


def test_unknown_string_labels_are_refused_or_dropped_out_loud(tmp_path, caplog):
    rows = [f"kaba {i},{'pos' if i % 2 else 'neg'}" for i in range(8)]
    d = write_split_files(tmp_path / "d", {"train": [*rows, "x y,neutral", "z w,neutral", "q r,Pos"],
                                           "validation": rows})
    with pytest.raises(LsrAdaptError) as e:
        prepare(d, "data.label_names=[neg,pos]")
    assert str(e.value) == (f"dataset split 'train' (data file {d / 'train.csv'}): 3 of 11 row(s) have labels "
                            f"['neutral', 'Pos'] that are not in data.label_names ['neg', 'pos']; add them to "
                            f"data.label_names, or set data.drop_unknown_labels=true to drop those rows")
    with caplog.at_level(logging.WARNING, logger="lsr_adapt.data"):
        splits = prepare(d, "data.label_names=[neg,pos]", "data.drop_unknown_labels=true")
    assert splits["train"]["labels"] == [0, 1] * 4
    assert "dropped 3 of 11 row(s)" in caplog.text and "data.drop_unknown_labels=true" in caplog.text


def test_max_length_null_is_the_tokenizers_limit(tmp_path):
    d = write_split_files(tmp_path / "d", {"train": [" ".join(["kaba"] * 40) + ",1", *GOOD], "validation": GOOD})
    assert len(prepare(d, "data.max_length=8")["train"][0]["input_ids"]) == 8
    assert len(prepare(d, "data.max_length=null")["train"][0]["input_ids"]) > 8


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["label_out_of_range", *[pytest.param(c, marks=pytest.mark.slow) for c in
                                                     ("empty", "header_only", "latin1", "unknown_string_label")]])
def test_cli_bad_data(tmp_path, case):
    """One row each through ``python main.py``: exit 2, one `error:` line naming the file, no traceback,
    nothing written."""
    d, extra = tmp_path / "data", []
    if case == "empty":
        write_split_files(d, {"train": GOOD, "validation": None})
        wanted = [f"data file {d / 'validation.csv'} is empty"]
    elif case == "header_only":
        write_split_files(d, {"train": [], "validation": GOOD})
        wanted = [f"data file {d / 'train.csv'} has a header but no rows"]
    elif case == "latin1":
        write_split_files(d, {"train": GOOD, "validation": ["naïve,1", *GOOD]}, encoding="latin-1")
        wanted = [f"data file {d / 'validation.csv'} is not valid utf-8", "data.encoding="]
    elif case == "label_out_of_range":
        write_split_files(d, {"train": [*GOOD, "a b,7"], "validation": GOOD})
        wanted = [str(d / "train.csv"), "1 of 9 row(s) have label values [7] outside 0..1"]
    else:
        write_split_files(d, {"train": [*GOOD, "a b,maybe"], "validation": GOOD})
        extra = ["data.label_names=[no,yes]"]
        wanted = [str(d / "train.csv"), "have labels", "not in data.label_names ['no', 'yes']",
                  "data.drop_unknown_labels=true"]
        write_split_files(d, {"train": [*[f"kaba {i},{'yes' if i % 2 else 'no'}" for i in range(8)], "a b,maybe"],
                              "validation": [f"koko {i},{'yes' if i % 2 else 'no'}" for i in range(4)]})
    run_dir = tmp_path / "run"
    proc = cli("experiment=smoke", "data=sst2", "data.synthetic=false", f"data.path={d}", *extra,
                   f"hydra.run.dir={run_dir}", "training.report_to=none", "training.num_train_epochs=1", cwd=tmp_path)
    assert_one_line_error(proc, *wanted, run_dir=run_dir)
