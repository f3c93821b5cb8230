"""Experiment trackers (logger config group, src/lsr_adapt/tracking.py): local stores, offline mode,
fast failure for unreachable servers, and no tracker ever required."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from helpers import compose
from omegaconf import OmegaConf

from lsr_adapt.errors import LsrAdaptError
from lsr_adapt.tracking import REACH_TIMEOUT_S, start_tracking, tracker_name

SMALL = ("experiment=smoke", "training.num_train_epochs=2", "data.synthetic_sizes.train=32",
         "data.synthetic_sizes.validation=16", "data.synthetic_sizes.test=16")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracking(*overrides) -> tuple:
    """What the tracker functions read of a composed config: the logger section, training.report_to."""
    cfg = compose(*overrides)
    return cfg.get("logger"), OmegaConf.select(cfg, "training.report_to", default=None)


def start(out_dir, *overrides):
    """``start_tracking`` for a composed config: its sections, and the resolved config it logs."""
    cfg = compose(*overrides)
    return start_tracking(*tracking(*overrides), out_dir, OmegaConf.to_container(cfg, resolve=True))


def train_with(tmp_path, name, *overrides):
    from lsr_adapt.training import train

    return train(compose(*SMALL, f"output_dir={tmp_path / name}", *overrides))


def test_tracker_selection():
    assert tracker_name(*tracking("experiment=smoke")) == "tensorboard"  # the default, local files
    assert tracker_name(*tracking("logger=mlflow")) == "mlflow"
    assert tracker_name(*tracking("logger=none")) == "none"
    assert tracker_name(*tracking("logger=wandb", "training.report_to=none")) == "none"  # the old switch still works
    assert tracker_name(*tracking("logger=wandb", "training.report_to=tensorboard")) == "tensorboard"
    with pytest.raises(LsrAdaptError, match="use logger=wandb"):
        tracker_name(*tracking("training.report_to=wandb"))
    with pytest.raises(LsrAdaptError, match="valid choices: mlflow, none, tensorboard, wandb"):
        tracker_name(*tracking("logger.name=comet"))


def test_no_tracker_needs_no_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert start(tmp_path, "logger=none").report_to == []
    assert start(tmp_path, "logger=tensorboard").report_to == ["tensorboard"]
    with pytest.raises(LsrAdaptError, match=r"pip install 'lsr-adapt\[track\]'"):
        start(tmp_path, "logger=wandb")
    with pytest.raises(LsrAdaptError, match=r"logger=mlflow needs the mlflow package"):
        start(tmp_path, "logger=mlflow")


def test_unreachable_servers_fail_fast(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    port = closed_port()
    t0 = time.perf_counter()
    with pytest.raises(LsrAdaptError, match=rf"MLflow tracking server http://127.0.0.1:{port} is unreachable"):
        start(tmp_path, "logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}")
    with pytest.raises(LsrAdaptError, match="wandb server .* is unreachable.*logger.mode=offline"):
        start(tmp_path, "logger=wandb", "logger.mode=online", f"logger.base_url=http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")  # honoured when tracking_uri is null
    with pytest.raises(LsrAdaptError, match="is unreachable"):
        start(tmp_path, "logger=mlflow")
    assert time.perf_counter() - t0 < 3 * REACH_TIMEOUT_S + 5


def test_mlflow_writes_a_local_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    res = train_with(tmp_path, "run", "logger=mlflow")
    store = tmp_path / "run" / "mlflow.db"  # a single run: the store sits in the run dir
    assert store.exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("lsr-adapt")
    assert exp.artifact_location == (tmp_path / "run" / "mlartifacts").as_uri()  # not ./mlruns
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    m = run.data.metrics
    assert m["final/best_metric"] == pytest.approx(res["best_metric"])
    assert m["final/adapter_params"] == res["adapter_params"]
    assert m["final/metric_before_training"] == pytest.approx(res["metric_before_training"])
    # the Trainer's integration logged every evaluation into the same run: before training + 2 epochs
    history = client.get_metric_history(run.info.run_id, "eval_accuracy")
    assert [h.value for h in history] == pytest.approx(
        [res["metric_before_training"]] + [e["accuracy"] for e in res["eval_history"]])
    assert run.data.params["cfg.model.lora.r"] == "8"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.json"]
    assert not list((tmp_path / "cwd").iterdir())  # nothing written where the job was started


@pytest.mark.slow
def test_mlflow_tracking_uri_is_shared_between_jobs(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{tmp_path / 'stores' / 'shared.db'}"
    for name in ("a", "b"):
        train_with(tmp_path, name, "logger=mlflow", f"logger.tracking_uri={uri}", "logger.experiment_name=cmp",
                   "training.num_train_epochs=1")
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["a", "b"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert mlflow.active_run() is None
    # artifacts sit beside the SQLite file, not in ./mlruns of whatever directory the jobs ran in
    assert len(list((tmp_path / "stores" / "mlartifacts").rglob("results.json"))) == 2
    assert not list(work.iterdir())


def test_wandb_offline_run(tmp_path):
    wandb = pytest.importorskip("wandb")
    res = train_with(tmp_path, "run", "logger=wandb", "training.num_train_epochs=1")
    assert wandb.run is None  # closed: the next job of a sweep gets its own run
    wandb.teardown()  # the wandb service writes the run file asynchronously; let it finish
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # offline: nothing was sent, everything is in the run dir
    data = runs[0].read_bytes()
    assert b"final/best_metric" in data and b"eval/accuracy" in data
    assert res["status"] == "completed"


def test_report_to_takes_a_list_and_any_integration_transformers_supports():
    from lsr_adapt.tracking import tracker_names

    assert tracker_names(*tracking("experiment=smoke", "training.report_to=[tensorboard]")) == ["tensorboard"]
    assert tracker_names(*tracking("logger=mlflow", "training.report_to=[mlflow,tensorboard]")) == ["mlflow", "tensorboard"]
    assert tracker_name(*tracking("logger=mlflow", "training.report_to=[tensorboard,mlflow]")) == "mlflow"  # its run is opened
    assert tracker_names(*tracking("logger=wandb", "training.report_to=[]")) == []
    with pytest.raises(LsrAdaptError, match="use logger=wandb"):
        tracker_names(*tracking("training.report_to=[tensorboard,wandb]"))
    with pytest.raises(LsrAdaptError, match="comet_ml, dagshub"):  # transformers' own list of integrations
        tracker_names(*tracking("training.report_to=[tensorboard,comet]"))
    with pytest.raises(LsrAdaptError, match="none goes alone"):
        tracker_names(*tracking("training.report_to=[none,tensorboard]"))


@pytest.mark.slow  # a CLI process with a package hidden (~7 s); tracker_names refuses it in-process above
def test_an_integration_whose_package_is_missing_is_one_line_before_anything_loads(tmp_path):
    from helpers import assert_one_line_error, cli
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    missing = next(n for n in ("neptune", "clearml", "comet_ml", "dvclive") if n not in get_available_reporting_integrations())
    run = tmp_path / "run"
    proc = cli("experiment=smoke", f"training.report_to=[tensorboard,{missing}]", f"hydra.run.dir={run}")
    assert_one_line_error(proc, f"training.report_to={missing}", "not installed")
    assert not run.exists()
