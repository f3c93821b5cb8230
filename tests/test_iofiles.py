"""Atomic writes killed half way: what they leave, and that a run's start removes exactly that."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from lsr_adapt.iofiles import is_temp_name, remove_stale_temp_files

KILLED_WRITER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from lsr_adapt.iofiles import atomic_path, publish_dir
    run = Path(sys.argv[1])
    def build(tmp):  # killed while the directory is being built
        (tmp / "adapter_model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    if sys.argv[2] == "file":
        with atomic_path(run / sys.argv[3]) as tmp:  # killed while the file is being written
            tmp.write_text("{half")
            os.kill(os.getpid(), signal.SIGKILL)
    else:
        publish_dir(build, run / sys.argv[3])
''')


def killed_write(run: Path, kind: str, name: str) -> None:
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run), kind, name], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr


def test_a_killed_atomic_write_leaves_temp_names_that_the_run_start_removes(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-8").mkdir(parents=True)
    killed_write(run, "file", "results.json")
    killed_write(run / "checkpoint-8", "file", "manifest.json")
    killed_write(run, "dir", "export")
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob(".*.tmp"))
    assert len(left) == 3 and all(is_temp_name(Path(p).name) for p in left), left
    assert not (run / "results.json").exists() and not (run / "export").exists()  # never half an output

    # everything else stays, however close its name: only ".<name>.<8 random chars>.tmp" is ours
    keep = {"results.json": "{}", "main.log": "log", ".hidden.tmp": "x", "notes.abcd1234.tmp": "x",
            ".results.json.abcd1234.tmp.bak": "x", ".results.json.ABCD1234.tmp": "x", ".results.json.abc.tmp": "x",
            "checkpoint-8/manifest.json": "{}", ".hydra/config.yaml": "a: 1"}
    for name, text in keep.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (run / ".link.abcd1234.tmp").symlink_to(outside)  # a symlink is neither followed nor removed
    (run / ".dirlink.abcd1234.tmp").symlink_to(tmp_path, target_is_directory=True)

    removed = remove_stale_temp_files(run)
    assert sorted(p.relative_to(run).as_posix() for p in removed) == left
    assert not any(p.exists() for p in removed)
    for name, text in keep.items():
        assert (run / name).read_text() == text, name
    assert outside.read_text() == "keep me" and (run / ".link.abcd1234.tmp").is_symlink()
    assert (run / ".dirlink.abcd1234.tmp").is_symlink() and (tmp_path / "run").is_dir()
    assert remove_stale_temp_files(run) == []  # nothing left to remove
    assert remove_stale_temp_files(tmp_path / "no such dir") == []


def test_temp_names_are_the_ones_atomic_path_and_publish_dir_make(tmp_path):
    import tempfile

    for _ in range(20):
        fd, f = tempfile.mkstemp(prefix=".results.json.", suffix=".tmp", dir=tmp_path)
        os.close(fd)
        d = tempfile.mkdtemp(prefix=".export.", suffix=".tmp", dir=tmp_path)
        assert is_temp_name(Path(f).name) and is_temp_name(Path(d).name)
    assert not is_temp_name("results.json") and not is_temp_name(".tmp") and not is_temp_name("..abcd1234.tmp")
