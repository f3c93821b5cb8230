"""The installed command: ``pip install`` of a built wheel (not editable) into a new venv gives
``lsr-adapt``, which runs from any directory on the configs shipped inside the package, with a
user's own configs from ``./conf``."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, SMALL_RUN


def _run(cmd, cwd, env=None, timeout=900):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv holding the wheel built from this checkout. Its dependencies (torch, transformers,
    ...) are this environment's, seen through a .pth path entry: a path entry runs none of the .pth
    files in it, so this checkout's editable install stays out and ``lsr_adapt`` is the wheel's."""
    tmp = tmp_path_factory.mktemp("installed")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)], tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("lsr_adapt-*.whl"))
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], tmp).returncode == 0
    py = venv / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip()
    Path(purelib, "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.mark.slow  # builds a wheel and trains from it (~1 min)
def test_the_installed_command_trains_predicts_and_takes_the_users_configs_from_any_directory(installed, tmp_path):
    cli = installed / "bin" / "lsr-adapt"
    where = _run([str(installed / "bin" / "python"), "-c", "import lsr_adapt; print(lsr_adapt.__file__)"], tmp_path)
    assert str(installed) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not this checkout

    empty = tmp_path / "empty"
    empty.mkdir()
    run = empty / "run"
    trained = _run([str(cli), "train", "experiment=smoke", "logger=none", *SMALL_RUN, f"hydra.run.dir={run}"], empty)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    assert (run / "main.log").exists() and (run / ".hydra" / "overrides.yaml").exists()

    predicted = _run([str(cli), "predict", "--run", str(run), "--text", "the quick brown fox"], empty)
    assert predicted.returncode == 0 and predicted.stdout.strip(), predicted.stderr[-3000:]
    assert "experiment/demo" in _run([str(cli), "configs", "experiment"], empty).stdout

    # the user's configs: a copied experiment, edited, is found from ./conf ahead of the packaged ones
    copied = _run([str(cli), "cp", "experiment/smoke", "conf/experiment/mine.yaml"], empty)
    assert copied.returncode == 0, copied.stderr
    mine = empty / "conf" / "experiment" / "mine.yaml"
    mine.write_text(mine.read_text().replace("learning_rate: 1.0e-2", "learning_rate: 3.0e-3"))
    run2 = empty / "run2"
    trained = _run([str(cli), "train", "experiment=mine", "logger=none", *SMALL_RUN, f"hydra.run.dir={run2}"], empty)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run2 / "results.json").read_text())["learning_rate"] == 3e-3

    bad = _run([str(cli), "trian"], empty)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown command 'trian'")
