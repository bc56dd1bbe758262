"""`slmkit <command> ...`: one entry point. Each stage package's `cli.add_commands(subparsers)` adds its
commands; this table is the only place they are listed (a new stage adds one line here)."""

from __future__ import annotations

import argparse
import importlib
import sys

from slmkit import __version__
from slmkit.errors import SlmkitError

STAGES = [
    "slmkit.demo.cli",       # demo
    "slmkit.model.cli",      # tokenizer train
    "slmkit.train.cli",      # train, data prepare, mup, repro
    "slmkit.export.cli",     # export hf|gguf|onnx
    "slmkit.hub.cli",        # models pull|list
    "slmkit.serve.cli",      # generate
    "slmkit.app.cli",        # serve api|ui
    "slmkit.evaluate.cli",   # eval, eval compare
    "slmkit.agents.cli",     # agent run|show|report
    "slmkit.bench.cli",      # bench latency|shapes
    "slmkit.merge.cli",      # merge, merge sweep
    "slmkit.deploy.cli",     # deploy
]


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error: …` line (exit 2) like every other bad input."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="slmkit", description="Train, evaluate, export and serve small reasoning LMs.")
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in STAGES:
        importlib.import_module(module_name).add_commands(sub)  # cli modules import only argparse at top level
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        print("error: no command given (`slmkit --help` lists them)", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
