"""Gravitational-wave detection with a Whisper encoder (``data.task_type: gw``).

Model (``WhisperGWDetector``): one Whisper encoder, shared by both detectors, turns each
detector's log-mel features into hidden states, which are pooled over time (``mean``, or ``last``
as in GW-Whisper), concatenated (H1 ‖ L1, 2·d_model) and fed to an MLP head
(``gw_head.hidden``, default 1024 → 512 → 256, ReLU) with one output logit; the loss is binary
cross-entropy on it. Any adapter method wraps the encoder's layers; ``head`` trains the MLP on a
frozen encoder, ``full`` trains everything. Head parameters: with d = d_model and widths
h₁..h_k, (2d + 1)·h₁ + Σ (h_i + 1)·h_(i+1) + (h_k + 1).

Features: each detector's whitened strain is passed to Whisper's own log-mel front end
(``WhisperFeatureExtractor``) as if it were 16 kHz audio, as GW-Whisper does (a strain frequency f
appears at f·16000/sample_rate), padded to ``data.n_frames`` frames of 160 samples. Whisper wants
exactly 2·max_source_positions frames (3000 = 30 s); with fewer, the encoder keeps only the first
n_frames/2 of its sinusoidal position embeddings, so short windows do not pay for 30 s of padding
(``data.n_frames: 3000`` reproduces the padded reference).

Metrics: ROC AUC of the logit (``metrics.roc_auc``), accuracy and F1 at logit 0, and, where the
injection SNR is known, ``roc_auc_snr_<lo>-<hi>``: positives with lo ≤ SNR < hi against all
negatives, for each ``data.snr_bins`` interval.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LsrAdaptError, first_line
from . import Task

log = logging.getLogger(__name__)

GW_METRICS = ("roc_auc", "accuracy", "f1")
FIELDS = {"h1_timeseries": "input_h1", "l1_timeseries": "input_l1", "labels": "labels", "injection_snr": "snr"}


# -- model ---------------------------------------------------------------------------------------------
class WhisperGWDetector(nn.Module):
    """Whisper encoder (shared over H1 and L1) → pool → concatenate → MLP → one logit; BCE loss."""

    base_model_prefix = "encoder"  # everything outside it (the MLP) is the task head
    main_input_name = "input_h1"

    def __init__(self, encoder: nn.Module, hidden=(1024, 512, 256), pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise LsrAdaptError(f"unknown gw_head.pooling {pooling!r}; valid choices: mean, last")
        self.encoder, self.config, self.pooling = encoder, encoder.config, pooling
        layers, width = [], 2 * encoder.config.d_model
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, input_h1: torch.Tensor, input_l1: torch.Tensor, labels: torch.Tensor | None = None,
                snr: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        b = input_h1.shape[0]
        # one encoder call over both detectors: the weights are shared, so they batch together
        hidden = self.encoder(torch.cat([input_h1, input_l1])).last_hidden_state
        pooled = hidden.mean(1) if self.pooling == "mean" else hidden[:, -1]
        logits = self.head(torch.cat([pooled[:b], pooled[b:]], dim=-1)).squeeze(-1)
        loss = None if labels is None else F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def frames_for(n_samples: int, hop: int = 160) -> int:
    """Whisper frames that hold ``n_samples`` (rounded up to even: the second conv has stride 2)."""
    return 2 * math.ceil(n_samples / (2 * hop))


def n_frames_of(data_cfg) -> int:
    frames = data_cfg.get("n_frames")
    if frames is not None:
        return int(frames)
    if data_cfg.get("sample_rate") and data_cfg.get("duration"):
        return frames_for(int(round(float(data_cfg.sample_rate) * float(data_cfg.duration))))
    raise LsrAdaptError("set data.n_frames (Whisper log-mel frames per detector; 3000 = 30 s) for this dataset")


class FixedPositions(nn.Module):
    """Whisper's sinusoidal position table as a buffer: Whisper never trains it (its parameter has
    requires_grad off), and as a buffer it stays fixed under ``full`` too, which unfreezes every
    parameter. Same state-dict name and lookup as the ``nn.Embedding`` it replaces."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(positions, self.weight)


def fit_positions(encoder: nn.Module, n_frames: int) -> None:
    """Let the encoder take ``n_frames`` frames: keep the first n_frames/2 position embeddings."""
    limit = 2 * encoder.config.max_source_positions
    if n_frames % 2 or not 0 < n_frames <= limit:
        raise LsrAdaptError(f"data.n_frames {n_frames} must be even and at most {limit} "
                            f"(2 × this Whisper's max_source_positions)")
    n_pos = n_frames // 2
    encoder.embed_positions = FixedPositions(encoder.embed_positions.weight[:n_pos])
    encoder.config.max_source_positions = encoder.max_source_positions = n_pos


def load_detector(name_or_path: str, data_cfg, model_cfg=None):
    """Whisper encoder + feature extractor + MLP head as a ``modeling.LoadedModel``."""
    from transformers import AutoFeatureExtractor, WhisperFeatureExtractor, WhisperModel

    from ..hub import hub_error, require_hub
    from ..modeling import LoadedModel

    try:
        require_hub(name_or_path, "model")  # an unreachable hub: one line at once, not a minute of retries
        whisper = WhisperModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise hub_error(name_or_path, "model", e) or LsrAdaptError(
            f"cannot load Whisper model {name_or_path!r}: {first_line(e)}") from None
    encoder = whisper.get_encoder()
    try:
        fe = AutoFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError):  # a checkpoint saved without one (the tiny smoke model)
        fe = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    if fe.feature_size != encoder.config.num_mel_bins:
        raise LsrAdaptError(f"{name_or_path}: feature extractor has {fe.feature_size} mel bins, the encoder "
                            f"{encoder.config.num_mel_bins}")
    n_frames = n_frames_of(data_cfg)
    fit_positions(encoder, n_frames)
    # the extractor pads / cuts to its own n_samples: make that n_frames frames
    fe.n_samples, fe.nb_max_frames = n_frames * fe.hop_length, n_frames
    head_cfg = dict((model_cfg or {}).get("gw_head") or {})
    model = WhisperGWDetector(encoder, tuple(head_cfg.get("hidden", (1024, 512, 256))), head_cfg.get("pooling", "mean"))
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    return LoadedModel(model, fe, str(name_or_path), new_param_names=head)


# -- data ----------------------------------------------------------------------------------------------
def _synthetic(data_cfg, parts) -> dict:
    """The generated strain (``gw_data.generate``) of every (sizes, seed) part as one
    ``save_to_disk`` directory in the cache, keyed by what generates it (the waveform as resolved:
    ``auto`` is pycbc's only where pycbc is installed); the sample has a validation split of its own."""
    from dataclasses import asdict

    from datasets import Dataset, DatasetDict

    from ..smoke import generated_sample
    from .gw_data import GWParams, generate, use_pycbc

    params = GWParams.from_config(data_cfg)

    def build(tmp):
        splits = {}
        for sizes, seed in parts:
            for split, n in sizes.items():
                d = generate(params, int(n), seed=int(seed), split=split)
                log.info("gw_synthetic %s: %d samples (%d with a %s chirp)", split, n, int(d["labels"].sum()),
                         d["waveform"])
                splits[split] = Dataset.from_dict({k: d[k] for k in FIELDS})
        DatasetDict(splits).save_to_disk(str(tmp))

    out = generated_sample("gw", [asdict(params), use_pycbc(params), parts], build)
    return {"path": str(out), "validation_from_train": None}


def _raw(data_cfg) -> tuple[dict, dict]:
    """{split name: Dataset} in the reference layout, and the role → split name mapping."""
    from pathlib import Path

    from datasets import Dataset, DatasetDict, load_from_disk

    from ..data import check_resolved

    check_resolved(data_cfg)
    splits = dict(data_cfg.get("splits") or {"train": "train", "validation": "validation", "test": "test"})
    path = data_cfg.get("path")
    if not path or not Path(str(path)).expanduser().exists():
        raise LsrAdaptError(f"data.path {path!r} is not a datasets.save_to_disk directory "
                            f"(fields h1_timeseries, l1_timeseries, labels[, injection_snr])")
    try:
        raw = load_from_disk(str(Path(str(path)).expanduser()))
    except Exception as e:  # noqa: BLE001 - not a save_to_disk layout, corrupt arrow files, ...
        raise LsrAdaptError(f"cannot load data.path {path}: {first_line(e)}") from None
    if isinstance(raw, Dataset):  # one table: everything is "train"
        raw = DatasetDict({"train": raw})
    raw = dict(raw)
    fraction = data_cfg.get("validation_from_train")
    if fraction:  # as GW-Whisper: train_test_split of one table, fixed by data.seed
        parts = raw[splits["train"]].train_test_split(test_size=float(fraction), seed=int(data_cfg.get("seed") or 0))
        raw.update({splits["train"]: parts["train"], "_validation_from_train": parts["test"]})
        splits["validation"] = "_validation_from_train"
    return raw, splits


def _to_inputs(ds, name: str, max_samples: int):
    missing = [c for c in ("h1_timeseries", "l1_timeseries", "labels") if c not in ds.column_names]
    if missing:
        raise LsrAdaptError(f"GW split {name!r} lacks field(s) {missing}; it has {ds.column_names} "
                            f"(reference layout: h1_timeseries, l1_timeseries, labels[, injection_snr])")
    if "injection_snr" not in ds.column_names:
        ds = ds.add_column("injection_snr", [float("nan")] * len(ds))
    ds = ds.select_columns(list(FIELDS)).rename_columns({k: v for k, v in FIELDS.items() if k != v})
    longest = max(len(x) for x in ds[:64]["input_h1"]) if len(ds) else 0
    if longest > max_samples:
        raise LsrAdaptError(f"GW split {name!r} holds {longest}-sample series, longer than data.n_frames × 160 = "
                            f"{max_samples}; raise data.n_frames")
    labels = set(np.unique(ds["labels"]).tolist())
    if not labels <= {0, 1}:
        raise LsrAdaptError(f"GW split {name!r} has labels {sorted(labels)}; they must be 0 (noise) / 1 (signal)")
    return ds.with_format("numpy")


def prepare_splits(data_cfg, feature_extractor, seed: int = 0, need_train: bool = True) -> dict:
    from ..data import limit_samples, split_roles
    from ..metrics import check_metric_names

    names = list(data_cfg.metrics) + [data_cfg.metric]
    check_metric_names(names, extra=GW_METRICS)
    other = [n for n in names if n not in GW_METRICS]
    if other:
        raise LsrAdaptError(f"metric {other[0]!r} does not apply to GW detection; valid choices: {', '.join(GW_METRICS)}")
    raw, splits = _raw(data_cfg)
    max_samples = n_frames_of(data_cfg) * getattr(feature_extractor, "hop_length", 160)
    out = {}
    for role, name, ds in split_roles(raw, splits, need_train):
        out[role] = _to_inputs(limit_samples(ds, data_cfg, role, seed), name, max_samples)
    return out


class GWCollator:
    """Rows of whitened strain → Whisper log-mel features for both detectors, labels and SNRs."""

    def __init__(self, feature_extractor):
        self.fe = feature_extractor

    def __call__(self, rows: list[dict]) -> dict:
        series = [np.asarray(r["input_h1"], dtype=np.float32) for r in rows] + \
                 [np.asarray(r["input_l1"], dtype=np.float32) for r in rows]
        feats = self.fe(series, sampling_rate=self.fe.sampling_rate, padding="max_length",
                        return_tensors="pt").input_features
        b = len(rows)
        return {"input_h1": feats[:b], "input_l1": feats[b:],
                "labels": torch.tensor([float(r["labels"]) for r in rows]),
                "snr": torch.tensor([float(r["snr"]) for r in rows])}


# -- metrics -------------------------------------------------------------------------------------------
def gw_metrics(names, logits, labels, snr=None, snr_bins=()) -> dict[str, float]:
    """ROC AUC / accuracy / F1 (logit > 0 = signal), and ROC AUC per SNR bin where SNRs are known."""
    from ..metrics import accuracy, f1, roc_auc

    logits, labels = np.asarray(logits, dtype=np.float64).reshape(-1), np.asarray(labels).reshape(-1).astype(int)
    pred = (logits > 0).astype(int)
    fns = {"roc_auc": lambda: roc_auc(logits, labels), "accuracy": lambda: accuracy(pred, labels),
           "f1": lambda: f1(pred, labels)}
    out = {n: fns[n]() for n in dict.fromkeys(names)}
    if snr is not None and len(snr_bins) > 1:
        snr = np.asarray(snr, dtype=np.float64).reshape(-1)
        known = labels == 0
        for lo, hi in zip(snr_bins[:-1], snr_bins[1:]):
            pos = (labels == 1) & (snr >= lo) & (snr < hi)
            if pos.any() and known.any():
                keep = pos | known
                out[f"roc_auc_snr_{lo:g}-{hi:g}"] = roc_auc(logits[keep], labels[keep])
    return out


def _compute_metrics(names, data_cfg=None):
    bins = [float(b) for b in (data_cfg.get("snr_bins") or [])] if data_cfg is not None else []

    def compute(p):
        labels, snr = p.label_ids if isinstance(p.label_ids, tuple) else (p.label_ids, None)
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return gw_metrics(names, logits, labels, snr, bins)

    return compute


def _collator(feature_extractor, data_cfg=None):
    return GWCollator(feature_extractor)  # pads every window to max_length already: static shapes


def _training_args(data_cfg) -> dict:
    # the SNR rides along as a second label, so compute_metrics can bin the AUC by it
    return {"label_names": ["labels", "snr"]}


def make_task(name: str) -> Task:
    return Task(name, load_detector, prepare_splits, _collator, _compute_metrics, _synthetic, _training_args)
