"""Atomic file writes: a reader never sees a half-written output (temp file in the same dir, then rename)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_dir(build, out, if_exists: str = "error") -> Path:
    """Build a directory in a temp dir beside ``out`` and rename it into place (never half a dir).

    ``if_exists``: "error" (a one-line LsrAdaptError), "replace" (swap the new dir in), or "keep"
    (a cache: return the existing dir; a concurrent builder that wins the race is fine too).
    """
    from .errors import LsrAdaptError

    out = Path(out)
    if out.exists():
        if if_exists == "keep":
            return out
        if if_exists == "error":
            raise LsrAdaptError(f"{out}: already exists; choose another output directory or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())
    try:
        build(tmp)
        if out.exists() and if_exists == "replace":
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, out)
            except OSError:
                if not (if_exists == "keep" and out.exists()):  # another job published it first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path next to ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# the temp names atomic_path (mkstemp) and publish_dir (mkdtemp) make: ".<name>." + tempfile's
# 8 random characters + ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_temp_name(name: str) -> bool:
    """True for a name atomic_path / publish_dir give their temp file or dir (``.<name>.XXXXXXXX.tmp``)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temp_files(directory) -> list[Path]:
    """Remove the temp files and dirs a killed atomic write left in ``directory`` (and below it, e.g. a
    ``checkpoint-N/`` manifest).

    Only names of the form ``.<name>.XXXXXXXX.tmp`` (what ``atomic_path`` and ``publish_dir`` create)
    are touched; symlinks are neither followed nor removed. Call it when a run starts, while it
    holds the run dir (no other process may be writing there). Returns what it removed.
    """
    removed = []
    root = Path(directory)
    if not root.is_dir() or root.is_symlink():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            p = here / name
            if is_temp_name(name) and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(p)
                dirnames.remove(name)  # gone: do not descend into it
        for name in filenames:
            p = here / name
            if is_temp_name(name) and not p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return sorted(removed)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor), None if unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def writing(path, what: str):
    """Turn a failed write below ``path`` into one line naming it (``what``: e.g. "the checkpoint").

    An ``OSError`` says why itself (no space, read-only, permission). torch.save and safetensors report
    a full disk their own way (``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``,
    ``SafetensorError: ... os error 28``): those become "No space left on device" when the file
    system is indeed (nearly) full; any other error is a bug and propagates unchanged.
    """
    from .errors import LsrAdaptError

    try:
        yield
    except OSError as e:
        raise LsrAdaptError(f"cannot write {what} {path}: {e.strerror or e}") from None
    except Exception as e:
        free = _free_bytes(Path(path))
        if "os error 28" in str(e) or (free is not None and free < (1 << 20)):
            raise LsrAdaptError(f"cannot write {what} {path}: No space left on device") from None
        raise
