"""benchmarks/step_time.py and benchmarks/gpu_check.sh run where the GPU run will: no Hydra, every
code path rehearsed on a CPU (issue 22, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow  # ~15-20 s: transformers' and peft's imports
def test_benchmarks_import_no_hydra():
    """The GPU machine has torch, transformers and peft but not Hydra (nor OmegaConf)."""
    code = ("import runpy, sys; sys.argv = ['x', '--help']\n"
            "for script in ('benchmarks/step_time.py', 'benchmarks/kernel_count.py'):\n"
            "    try:\n"
            "        runpy.run_path(script, run_name='__main__')\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_tiny_rehearsal_covers_both_scales_and_the_cpu_modes(tmp_path):
    out = tmp_path / "tiny.json"
    proc = subprocess.run([sys.executable, "benchmarks/step_time.py", "--tiny", "--json", str(out),
                           "--trace-dir", str(tmp_path / "traces"), "--trace-methods", "lsr"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if "error" in r]
    seen = {(r["scale"], r["mode"]) for r in rows}
    assert seen == {(s, m) for s in ("roberta", "llama1b") for m in ("eager", "compiled")}
    assert all(r["ms"] > 0 for r in rows)
    profiles = json.loads((tmp_path / "tiny.profile.json").read_text())["profiles"]
    assert len(profiles) == len(rows) and all(p["aten_ops"] > 0 and p["top_ops"] for p in profiles)
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == sorted(  # lsr: eager and compiled
        f"{s}.lsr.{m}.json.gz" for s in ("roberta", "llama1b") for m in ("eager", "compiled"))
