"""``lsr-adapt COMMAND ...`` (or ``python -m lsr_adapt COMMAND ...``): one installed command.

    train     fine-tune (Hydra overrides: model=..., data=..., experiment=..., --multirun)
    predict   a saved run on texts or a split          export    merged model / peft / LoRA files
    generate  text from a causal-LM run                report    tables and plots over runs
    configs   list the packaged configs (a group)      cp        copy a packaged config into ./conf
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import fail
from .errors import LsrAdaptError

USAGE = __doc__.split("\n", 2)[2].rstrip()


def _conf_dir() -> Path:
    return Path(__file__).resolve().parent / "conf"


def configs(argv: list[str]) -> None:
    """``lsr-adapt configs [GROUP]``: the packaged options, ``group/option`` a line."""
    root = _conf_dir()
    group = argv[0].strip("/") if argv else ""
    base = root / group
    if not base.is_dir():
        groups = sorted(p.name for p in root.iterdir() if p.is_dir())
        fail(LsrAdaptError(f"unknown config group {group!r}; valid groups: {', '.join(groups)}"))
    for f in sorted(base.rglob("*.yaml")):
        print(f.relative_to(root).with_suffix(""))


def copy_config(argv: list[str]) -> None:
    """``lsr-adapt cp GROUP/OPTION [DEST]``: a packaged config copied to ``./conf/GROUP/OPTION.yaml``
    (or DEST) to edit; ``lsr-adapt train`` run from this directory finds it there first."""
    if not argv or len(argv) > 2:
        fail(LsrAdaptError("usage: lsr-adapt cp GROUP/OPTION [DEST], e.g. lsr-adapt cp experiment/demo "
                           "(lsr-adapt configs lists them)"))
    name = argv[0].removesuffix(".yaml").strip("/")
    source = _conf_dir() / f"{name}.yaml"
    if not source.is_file():
        fail(LsrAdaptError(f"no packaged config {name!r}; lsr-adapt configs lists them"))
    dest = Path(argv[1]) if len(argv) == 2 else Path("conf") / f"{name}.yaml"
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        fail(LsrAdaptError(f"{dest} already exists; choose another DEST"))
    from .iofiles import write_text

    write_text(dest, source.read_text())
    print(dest)


def _command(name: str):
    if name == "train":
        from .app import train_main

        return train_main
    if name in ("predict", "export", "generate", "report"):
        import importlib

        return importlib.import_module(f"lsr_adapt.{name}").main
    return {"configs": configs, "cp": copy_config}.get(name)


COMMANDS = ("train", "predict", "export", "generate", "report", "configs", "cp")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: lsr-adapt COMMAND [ARGS ...]\n\n{USAGE}\n\n`lsr-adapt COMMAND --help` for one command's options.")
        raise SystemExit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        fail(LsrAdaptError(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}"))
    sys.argv = [f"lsr-adapt {name}", *rest]  # each command's usage line names itself
    _command(name)(rest)


if __name__ == "__main__":
    main()
