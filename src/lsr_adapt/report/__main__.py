"""``python -m lsr_adapt.report SWEEP_OR_RUN_DIR [more dirs] [--out DIR] [--no-plots]``."""

from __future__ import annotations

import sys
from pathlib import Path

from . import __doc__ as PACKAGE_DOC
from .build import build_report


def main(argv=None) -> None:
    from ..cli import ArgumentParser, exit_on_user_error

    p = ArgumentParser(prog="python -m lsr_adapt.report", description=PACKAGE_DOC.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write the report (default: the first dir; beside it, RUN_DIR-report/, "
                        "when that is a finished run dir)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args(argv)
    w = exit_on_user_error(build_report, args.dirs, args.out, plots=not args.no_plots)
    print(f"{w['md']}: {w['configs']} configuration(s) from {w['runs']} run(s); "
          f"{len(w['problems'])} failed/unfinished; {len(w['plots'])} plot(s) in {w['md'].parent}")


if __name__ == "__main__":
    main(sys.argv[1:])
