"""Task metrics computed locally (no metric downloads)."""

from __future__ import annotations

import math

import numpy as np

from .errors import choices_error


def accuracy(pred, label) -> float:
    return float(np.mean(pred == label))


def f1(pred, label) -> float:
    """Binary F1 of class 1 (GLUE's convention for MRPC and QQP)."""
    tp = np.sum((pred == 1) & (label == 1))
    fp = np.sum((pred == 1) & (label != 1))
    fn = np.sum((pred != 1) & (label == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def macro_f1(pred, label) -> float:
    scores = []
    for c in np.unique(np.concatenate([pred, label])):
        tp = np.sum((pred == c) & (label == c))
        denom = np.sum(pred == c) + np.sum(label == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def mcc(pred, label) -> float:
    """Matthews correlation (CoLA), multiclass form; 0 when undefined."""
    classes = np.unique(np.concatenate([pred, label]))
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)))
    for p, t in zip(pred, label):
        cm[idx[t], idx[p]] += 1
    t_sum, p_sum, n = cm.sum(1), cm.sum(0), cm.sum()
    cov_tp = np.trace(cm) * n - t_sum @ p_sum
    denom = np.sqrt((n**2 - p_sum @ p_sum) * (n**2 - t_sum @ t_sum))
    return float(cov_tp / denom) if denom else 0.0


def pearson(pred, label) -> float:
    from scipy import stats  # lazily: half a second of every command line's start, for 3 metrics

    return float(stats.pearsonr(pred, label)[0]) if np.std(pred) > 0 else 0.0


def spearman(pred, label) -> float:
    from scipy import stats

    return float(stats.spearmanr(pred, label)[0]) if np.std(pred) > 0 else 0.0


def roc_auc(scores, label) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties
    counting ½: the Mann-Whitney U statistic over the average ranks, U / (n_pos · n_neg). NaN when
    one class is absent."""
    scores, label = np.asarray(scores, dtype=np.float64).reshape(-1), np.asarray(label).reshape(-1)
    pos = label == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy import stats

    ranks = stats.rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def perplexity(mean_nll: float) -> float:
    """Perplexity = exp(mean next-token cross-entropy in nats); inf where exp overflows."""
    return math.exp(mean_nll) if mean_nll < 709 else math.inf


CLASSIFICATION = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc}
REGRESSION = {"pearson": pearson, "spearman": spearman}
METRICS = {**CLASSIFICATION, **REGRESSION}
# computed from the evaluation loss, not from predictions (tasks/causal_lm.py)
LOSS_METRICS = {"perplexity": perplexity}
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})


def higher_is_better(name: str) -> bool:
    """Which way the best epoch lies for a metric."""
    return name not in LOWER_IS_BETTER


def check_metric_names(names, extra=()) -> None:
    """Every name is a known metric (``extra``: names a task computes itself, e.g. roc_auc)."""
    known = {**METRICS, **LOSS_METRICS, **dict.fromkeys(extra)}
    for n in names:
        if n not in known:
            raise choices_error("metric", n, known)


def compute(names, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics by name from raw logits: argmax for classification, the single output for regression."""
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
    regression = logits.ndim == 1 or logits.shape[-1] == 1
    pred = logits.reshape(-1) if regression else logits.argmax(-1)
    return {n: METRICS[n](pred, np.asarray(labels)) for n in names}


def mean_loss(logits, labels) -> float:
    """The model's own loss over every example: cross-entropy (classification) or MSE (one output).

    Reported as the evaluation loss: the Trainer's is a mean of per-batch means, in which the
    padding examples that even out a split over DDP ranks weigh in; this is computed from the
    gathered predictions, which are exactly the dataset's examples."""
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return float(np.mean((logits.reshape(-1) - labels.astype(np.float64)) ** 2))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(np.int64)]))
