"""Collecting runs: every ``results.json`` below the given dirs, the jobs that did not complete, and
the runs grouped into configurations (everything but the seed) with their labels."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LsrAdaptError
from ..outpaths import FAILED, HYDRA_RECORD, RESULTS
from ..sweep_status import read_failure

# keys of results.json that make a configuration (everything but the seed and the measurements)
CONFIG_FIELDS = ("task", "task_type", "metric_name", "model_name", "adaptation_type", "method_config", "pooling",
                 "init_from", "freeze_adapter", "learning_rate", "warmup_ratio", "batch_size", "num_train_epochs",
                 "precision", "device")
# method hyperparameters always named in labels when set; others only where they vary
LABEL_ALWAYS = ("r", "num_terms", "alpha", "in_factors", "out_factors")
LABEL_NEVER = ("path",)  # LSR's compute path: the same update computed another way
SHORT = {"num_terms": "t", "alpha": "α", "in_factors": "in", "out_factors": "out"}


@dataclass
class Problem:
    path: Path
    status: str
    reason: str


@dataclass
class Config:
    """The runs (one per seed, normally) of one configuration."""

    key: tuple
    runs: list[dict] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    label: str = ""

    @property
    def first(self) -> dict:
        return self.runs[0]

    def values(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.runs if isinstance(r.get(name), (int, float))]

    def mean(self, name: str) -> float | None:
        v = self.values(name)
        return statistics.fmean(v) if v else None

    def std(self, name: str) -> float | None:
        """Sample standard deviation over the seeds; None for a single run."""
        v = self.values(name)
        return statistics.stdev(v) if len(v) > 1 else None

    def test_values(self) -> list[float]:
        """The selection metric on the labelled test split (the best epoch's weights), per run."""
        out = []
        for r in self.runs:
            v = (r.get("test_metrics") or {}).get(r.get("metric_name"))
            if isinstance(v, (int, float)):
                out.append(float(v))
        return out

    def test_mean_std(self) -> tuple[float | None, float | None]:
        v = self.test_values()
        return (statistics.fmean(v) if v else None), (statistics.stdev(v) if len(v) > 1 else None)

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.runs]


# -- collecting --------------------------------------------------------------------------------------
def collect(dirs: list[Path]) -> tuple[list[tuple[Path, dict]], list[Problem]]:
    """(run dir, results) of every completed run below ``dirs``, and the jobs that did not complete."""
    runs, problems, seen = [], [], set()
    found_any = False
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise LsrAdaptError(f"{d} is not a directory: give sweep or run directories (multirun/..., outputs/...)")
        result_files = sorted(d.rglob(RESULTS))
        job_dirs = sorted({p.parent for p in d.rglob(HYDRA_RECORD) if p.is_dir()} | {p.parent for p in d.rglob(FAILED)})
        found_any = found_any or bool(result_files or job_dirs)
        for f in result_files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                data = json.loads(f.read_text())
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                problems.append(Problem(f.parent, "unreadable", f"{RESULTS}: {e}"))
                continue
            status = str(data.get("status", "unknown"))
            if status != "completed":
                reason = data.get("error") or data.get("message") or f"{RESULTS} says status={status}"
                if status == "pruned" and isinstance(data.get("pruned"), dict):  # hpo: the pruner stopped it
                    pr = data["pruned"]
                    reason = (f"Optuna trial {pr.get('trial')} stopped by the pruner after epoch {pr.get('epoch')} "
                              f"(validation {pr.get('metric')} {pr.get('value')})")
                problems.append(Problem(f.parent, status, str(reason)))
                continue
            runs.append((f.parent, data))
        for j in job_dirs:
            if (j / RESULTS).exists() or j.resolve() in seen:
                continue
            seen.add(j.resolve())
            failure = read_failure(j)  # a failed job of a sweep: its error line (sweep_status.run_job)
            problems.append(Problem(j, "failed", failure.error) if failure else
                            Problem(j, "unfinished", _why_unfinished(j)))
    if not found_any:
        where = ", ".join(str(d) for d in dirs)
        raise LsrAdaptError(f"no {RESULTS} and no Hydra job directory below {where}: nothing to report "
                            f"(run e.g. `python main.py -m experiment=smoke model=roberta_lora,roberta_lsr` first)")
    return runs, problems


def _why_unfinished(job: Path) -> str:
    """The job's last logged error (``main.log``), else 'no results.json'."""
    logs = sorted(job.glob("*.log"))
    for log_file in logs:
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        errors = [ln for ln in lines if "[ERROR]" in ln or ln.startswith("error:")]
        if errors:
            return "failed: " + re.sub(r"^\[[^]]*\]\[[^]]*\]\[ERROR\] - ", "", errors[-1]).strip()[:300]
    return f"no {RESULTS} (still running, killed, or crashed before writing it)"


def group_configs(runs: list[tuple[Path, dict]]) -> list[Config]:
    groups: dict[tuple, Config] = {}
    for run_dir, data in runs:
        key = tuple(json.dumps(data.get(k), sort_keys=True) for k in CONFIG_FIELDS)
        cfg = groups.setdefault(key, Config(key))
        cfg.runs.append(data)
        cfg.dirs.append(run_dir)
    configs = list(groups.values())
    _set_labels(configs)
    configs.sort(key=lambda c: (str(c.first.get("task")), str(c.first.get("metric_name")),
                                str(c.first.get("adaptation_type")), c.first.get("adapter_params") or 0,
                                c.first.get("learning_rate") or 0, c.label))
    return configs


def fmt_value(v) -> str:
    if isinstance(v, dict) and "path" in v:  # init_from: the run it started from
        return Path(str(v["path"])).name
    if isinstance(v, list):
        return "×".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _set_labels(configs: list[Config]) -> None:
    """'r=2 t=16 α=2' style labels: the size fields, plus whatever differs between configs of a method."""
    by_method: dict[str, list[Config]] = {}
    for c in configs:
        by_method.setdefault(str(c.first.get("adaptation_type")), []).append(c)
    for group in by_method.values():
        mcs = [c.first.get("method_config") or {} for c in group]
        keys = list(dict.fromkeys(k for mc in mcs for k in mc))
        varying = {k for k in keys if len({json.dumps(mc.get(k), sort_keys=True) for mc in mcs}) > 1}
        for c, mc in zip(group, mcs):
            parts = []
            for k in keys:
                v = mc.get(k)
                if k in LABEL_NEVER or v is None or (k not in varying and k not in LABEL_ALWAYS):
                    continue
                parts.append(k if v is True else f"{SHORT.get(k, k)}={fmt_value(v)}")
            c.label = " ".join(parts)


def display(c: Config, configs: list[Config]) -> str:
    """Method + label, and the training setting where it differs from the other configs shown."""
    text = f"{c.first.get('adaptation_type')} {c.label}".strip()
    for k, short in (("learning_rate", "lr"), ("warmup_ratio", "warmup"), ("num_train_epochs", "ep"),
                     ("batch_size", "bs"), ("model_name", "model"), ("pooling", "pool"), ("init_from", "from"), ("freeze_adapter", "frozen"),
                     ("device", "on")):
        if len({json.dumps(x.first.get(k)) for x in configs}) > 1:
            text += f" {short}={fmt_value(c.first.get(k))}"
    return text


def by_task(configs: list[Config]) -> dict[tuple[str, str], list[Config]]:
    tasks: dict[tuple[str, str], list[Config]] = {}
    for c in configs:
        tasks.setdefault((str(c.first.get("task")), str(c.first.get("metric_name"))), []).append(c)
    return tasks
