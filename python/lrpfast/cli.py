"""The ``lrpfast`` command: ``lrpfast info`` (version, BLAS, threads, CUDA) and more."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args) -> int:
    from .info import info
    for k, v in info().items():
        print(f"{k:>14}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="lrpfast", description="Layer-wise Relevance Propagation "
                                "for Caffe models")
    p.add_argument("--version", action="version", version=f"lrpfast {__version__}")
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("info", help="print version, BLAS, threads and CUDA status")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("demo", help="explain the bundled images with the bundled model under "
                       "several rules; write heatmap PNGs and print mu / mu_w scores")
    from .demo import add_arguments as _demo_arguments, run_from_args as _demo_run
    _demo_arguments(s)
    s.set_defaults(func=_demo_run)
    from .explain import add_subcommands as _explain_subcommands   # explain, heatmaps
    _explain_subcommands(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:   # outputs are written atomically: nothing half-written is left
        print("lrpfast: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, MemoryError) as e:
        print(f"lrpfast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
