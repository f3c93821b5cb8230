"""Predict with a saved run.

    python -m lsr_adapt.predict --run RUN_DIR --text "..." [--text-pair "..."]   # label + probabilities
    python -m lsr_adapt.predict --run RUN_DIR --file in.csv|in.jsonl --out preds.csv
    python -m lsr_adapt.predict --run RUN_DIR --eval-split validation [--data path=/local/copy]

The run directory is rebuilt with ``artifacts.load_run`` (base model + tokenizer + adapter + head,
with the base-fingerprint check). Files are read with the run's ``data.text_fields`` as columns
(``--text-fields`` to override) and written atomically; ``--eval-split`` evaluates the run's
metrics on a split of its dataset (``--data key=value`` overrides the run's ``data`` settings).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from .artifacts import LoadedRun, load_run, saved_run
from .cli import ArgumentParser, add_run_loading_args, exit_on_user_error, quiet_hf, run_loading_kwargs
from .errors import LsrAdaptError
from .iofiles import write_json, write_text
from .modeling import check_max_length, position_limit
from .outpaths import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RUN_CONFIG, check_output_file
from .sources import resolve_data
from .tasks import get_task

log = logging.getLogger(__name__)


def _max_length(run: LoadedRun) -> int:
    if run.run_config is not None and run.run_config.get("data", {}).get("max_length"):
        length = int(run.run_config.data.max_length)
    else:
        length = min(int(getattr(run.tokenizer, "model_max_length", 512) or 512), 512)
    limit = position_limit(run.model.config)
    if limit is not None and length > limit:
        # a run trained with max_length above the model's positions (before training refused it)
        # never saw a longer text: truncating there is all the model can take
        log.warning("the run's data.max_length=%d exceeds the model's %d positions; truncating inputs to %d",
                    length, limit, limit)
        return limit
    return length


@torch.no_grad()
def predict_logits(run: LoadedRun, texts: list[str], pairs: list[str] | None = None,
                   batch_size: int = 32) -> np.ndarray:
    """Raw logits (n × num_labels) for ``texts`` (and the second texts ``pairs``), in batches."""
    device = next(run.model.parameters()).device
    out = []
    max_length = _max_length(run)
    for i in range(0, len(texts), batch_size):
        args = [texts[i:i + batch_size]] + ([pairs[i:i + batch_size]] if pairs is not None else [])
        batch = run.tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = run.model(**{k: v.to(device) for k, v in batch.items()}).logits
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, run.num_labels), dtype=np.float32)


def to_predictions(run: LoadedRun, logits: np.ndarray) -> list[dict]:
    """Per row: ``label`` and ``probabilities`` (softmax), or ``score`` for a regression head."""
    if run.num_labels == 1:
        return [{"score": float(v)} for v in logits.reshape(-1)]
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    names = run.label_names
    return [{"label": names[int(p.argmax())], "probabilities": {n: float(v) for n, v in zip(names, p)}}
            for p in probs]


def predict_texts(run: LoadedRun, texts, pairs=None, batch_size: int = 32) -> list[dict]:
    return to_predictions(run, predict_logits(run, list(texts), None if pairs is None else list(pairs), batch_size))


def _text_fields(run: LoadedRun, override: str | None) -> list[str]:
    if override:
        return [f.strip() for f in override.split(",") if f.strip()]
    if run.run_config is not None and run.run_config.get("data", {}).get("text_fields"):
        return [str(f) for f in run.run_config.data.text_fields]
    fields = run.adapter_config.get("text_fields")
    if not fields:
        raise LsrAdaptError(f"{run.path} does not record its text columns; pass --text-fields a[,b]")
    return list(fields)


def read_rows(path) -> list[dict]:
    """Rows of a .csv (header line) or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise LsrAdaptError(f"{path}: no such input file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in (".jsonl", ".json"):
            rows = []
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise LsrAdaptError(f"{path}: line {i} is not JSON ({e})") from None
                        if not isinstance(row, dict):
                            raise LsrAdaptError(f"{path}: line {i} is not a JSON object")
                        rows.append(row)
            return rows
    except UnicodeDecodeError as e:
        raise LsrAdaptError(f"{path}: not a text file ({e})") from None
    raise LsrAdaptError(f"{path}: unknown input format {suffix!r}; valid choices: .csv, .tsv, .jsonl")


def predict_file(run: LoadedRun, in_path, out_path, text_fields: str | None = None, batch_size: int = 32) -> int:
    """Predict every row of ``in_path``; write the text columns, label and probabilities to ``out_path``."""
    fields = _text_fields(run, text_fields)
    if len(fields) not in (1, 2):
        raise LsrAdaptError(f"--text-fields takes one or two columns, got {fields}")
    rows = read_rows(in_path)
    if rows:
        missing = [f for f in fields if f not in rows[0]]
        if missing:
            raise LsrAdaptError(f"{in_path}: no column(s) {missing}; it has {list(rows[0])} (set --text-fields)")
    cols = [[str(r.get(f, "")) for r in rows] for f in fields]
    preds = predict_texts(run, cols[0], cols[1] if len(cols) == 2 else None, batch_size)
    names = run.label_names
    header = fields + (["score"] if run.num_labels == 1 else ["label"] + [f"prob_{n}" for n in names])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for i, p in enumerate(preds):
        texts = [c[i] for c in cols]
        if run.num_labels == 1:
            writer.writerow(texts + [f"{p['score']:.6g}"])
        else:
            writer.writerow(texts + [p["label"]] + [f"{p['probabilities'][n]:.6f}" for n in names])
    write_text(out_path, buf.getvalue())
    return len(preds)


def _split_names(data_cfg) -> list[str]:
    """The split names the dataset ``data_cfg`` points at has (a local dir: also its other data files)."""
    from .data import FILE_FORMATS, load_raw

    raw, _ = load_raw(data_cfg)
    names = set(raw)
    local = Path(str(data_cfg.get("path") or "")).expanduser()
    if data_cfg.get("path") and local.is_dir() and not (local / "dataset_dict.json").exists():
        names |= {p.stem for p in local.iterdir() if p.suffix.lower() in FILE_FORMATS}
    return sorted(names)


def evaluate_split(run: LoadedRun, split: str, data_overrides=(), batch_size: int = 64) -> dict:
    """The run's metrics on ``split`` of its dataset (as in training: same tokenisation and metrics)."""
    from omegaconf import OmegaConf
    from transformers import DataCollatorWithPadding

    from .data import prepare_splits
    from .metrics import compute

    if run.run_config is None:
        raise LsrAdaptError(f"{run.path}: no {RUN_CONFIG}, so the dataset is unknown; "
                            f"use --file with a labelled file instead")
    data_cfg = OmegaConf.create(OmegaConf.to_container(run.run_config.data, resolve=True))
    for item in data_overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise LsrAdaptError(f"--data takes key=value, got {item!r}")
        if key.split(".")[0] not in data_cfg:  # a typo would otherwise be ignored silently
            raise LsrAdaptError(f"--data {item}: the run's data config has no key {key.split('.')[0]!r}; "
                                f"its keys: {', '.join(sorted(data_cfg))}")
        OmegaConf.update(data_cfg, key, yaml.safe_load(value) if value else None, merge=False)
    # a generated sample or an asset: the files training read (the same sample: the cache keeps it);
    # its splits are the ones training generated, never one made up for --eval-split
    data_cfg = resolve_data(data_cfg, get_task(data_cfg))
    splits = dict(data_cfg.get("splits") or {"train": "train", "validation": "validation", "test": "test"})
    role = next((r for r, name in splits.items() if name == split), split if split in splits else None)
    if role is None:  # another split of the dataset (e.g. validation_mismatched): evaluate it as the test role
        role, splits["test"] = "test", split
    all_splits = dict(splits)
    if not data_cfg.get("validation_from_train"):
        # splits that are not evaluated need no tokenising (a carved validation split depends on
        # the train split, so that keeps them all)
        splits = {r: n for r, n in splits.items() if r in (role, "validation")}
    data_cfg = OmegaConf.create(OmegaConf.to_container(data_cfg))  # writable (a resolved section is not)
    data_cfg.splits = splits
    if data_cfg.get("max_length") is not None:  # e.g. --data max_length=1000: more than the model's positions
        check_max_length(run.model.config, data_cfg.max_length, "--data max_length")
    out = prepare_splits(data_cfg, run.tokenizer, need_train=role == "train")
    if role not in out:  # a test-role split is skipped when it is missing or unlabelled: say which
        existing = _split_names(OmegaConf.merge(data_cfg, {"splits": all_splits}))
        if split not in existing:
            raise LsrAdaptError(f"--eval-split {split!r}: the run's dataset has no split {split!r}; "
                                f"its splits are {existing}")
        raise LsrAdaptError(f"--eval-split {split!r}: split {split!r} has no labels to evaluate against")
    ds = out[role]
    collate = DataCollatorWithPadding(run.tokenizer)
    device = next(run.model.parameters()).device
    logits, labels = [], []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            batch = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
            labels.append(batch.pop("labels").numpy())
            logits.append(run.model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    names = list(dict.fromkeys([str(data_cfg.metric), *data_cfg.metrics]))
    metrics = compute(names, np.concatenate(logits), np.concatenate(labels))
    return {"run": str(run.path), "split": split, "num_examples": len(ds), "metrics": metrics}


def _format(pred: dict) -> str:
    if "score" in pred:
        return f"score: {pred['score']:.6g}"
    probs = ", ".join(f"{n}={v:.4f}" for n, v in pred["probabilities"].items())
    return f"label: {pred['label']}\nprobabilities: {probs}"


def check_args(args) -> None:
    """Every option checked before the model loads: one line naming the value and what is allowed."""
    modes = sum(x is not None for x in (args.text, args.file, args.eval_split))
    if modes != 1:
        raise LsrAdaptError("give exactly one of --text, --file or --eval-split")
    if args.file is not None and not args.out:
        raise LsrAdaptError("--file needs --out PREDICTIONS.csv")
    if args.text_pair is not None and args.text is None:
        raise LsrAdaptError("--text-pair goes with --text")
    if args.json and args.text is None:
        raise LsrAdaptError("--json goes with --text (--eval-split prints JSON anyway, --file writes a CSV)")
    if args.batch_size < 1:
        raise LsrAdaptError(f"--batch-size {args.batch_size}: must be an integer >= 1")
    if args.out is not None and args.text is not None:
        raise LsrAdaptError(f"--out {args.out}: goes with --file or --eval-split (--text prints its prediction)")
    if args.text_fields is not None and args.file is None:
        raise LsrAdaptError(f"--text-fields {args.text_fields!r}: goes with --file")
    if args.text_fields is not None and len([f for f in args.text_fields.split(",") if f.strip()]) not in (1, 2):
        raise LsrAdaptError(f"--text-fields {args.text_fields!r}: give one or two column names, comma separated")
    if args.data and args.eval_split is None:
        raise LsrAdaptError(f"--data {args.data[0]}: goes with --eval-split")
    if args.eval_split is not None and not args.eval_split.strip():
        raise LsrAdaptError("--eval-split '': give a split name, e.g. validation or test")
    for item in args.data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LsrAdaptError(f"--data takes key=value, got {item!r}")
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise LsrAdaptError(f"--data {item}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    if args.file is not None:
        read_rows(args.file)  # a missing / unreadable / wrongly formatted input file: before the model loads
    if args.out is not None:
        # never into the run predicted with (a finished run is never changed) nor over the input file
        check_output_file(args.out, "--out", inputs=[args.file], protect=[args.run])


def run_cli(args) -> None:
    check_args(args)
    task_type = saved_run(args.run, args.base)[1].get("task_type")
    if task_type == "causal_lm":  # no label to predict: its model continues text
        raise LsrAdaptError(f"{args.run}: a causal_lm run, not a classification one; use python -m lsr_adapt.generate "
                            f"--run {args.run} --prompt TEXT for it")
    run = load_run(args.run, **run_loading_kwargs(args), device=args.device)
    if args.text is not None:
        pred = predict_texts(run, [args.text], None if args.text_pair is None else [args.text_pair])[0]
        print(json.dumps(pred) if args.json else _format(pred))
    elif args.file is not None:
        n = predict_file(run, args.file, args.out, args.text_fields, args.batch_size)
        print(f"wrote {n} predictions to {args.out}")
    else:
        result = evaluate_split(run, args.eval_split, args.data, args.batch_size)
        if args.out:
            write_json(args.out, result)
        print(json.dumps(result, indent=2))


def main(argv=None) -> None:
    p = ArgumentParser(prog="python -m lsr_adapt.predict", description="Predict with a saved run.")
    p.add_argument("--run", required=True, help=f"run directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS})")
    p.add_argument("--text", help="one input text")
    p.add_argument("--text-pair", help="its second text (sentence-pair tasks)")
    p.add_argument("--file", help="a .csv / .tsv (with header) or .jsonl file of inputs")
    p.add_argument("--out", help="predictions CSV for --file; metrics JSON for --eval-split")
    p.add_argument("--text-fields", help="input columns, comma separated (default: the run's data.text_fields)")
    p.add_argument("--eval-split", help="evaluate the run on this split of its dataset")
    p.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's data settings for --eval-split (e.g. path=/data/mrpc)")
    p.add_argument("--batch-size", type=int, default=32)
    add_run_loading_args(p)
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    args = p.parse_args(argv)
    quiet_hf()
    exit_on_user_error(run_cli, args)


if __name__ == "__main__":
    main()
