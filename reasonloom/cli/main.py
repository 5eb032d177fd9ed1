"""The `reasonloom` command. User-input errors exit 2 with one line on stderr; progress and
logs go to stderr, results to stdout."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# subcommand -> module with `add_arguments(parser)` and `main(args) -> int`; imported lazily so
# `reasonloom validate` never pays for the engine's imports.
SUBCOMMANDS = {
    "run": ("reasonloom.cli.run_cmd", "run a recipe on a question or a dataset"),
    "validate": ("reasonloom.cli.recipe_cmds", "check recipes without running them"),
    "graph": ("reasonloom.cli.recipe_cmds", "draw a recipe's graph (Mermaid or PNG)"),
    "models": ("reasonloom.cli.recipe_cmds", "the roles a recipe uses and whether each answers"),
    "serve": ("reasonloom.serve.cli", "serve recipes as OpenAI-compatible models"),
    "chat": ("reasonloom.serve.chat", "chat with a recipe or a served model in the terminal"),
    "bench": ("reasonloom.cli.bench_cmd", "measure recipes on a dataset"),
    "steer": ("reasonloom.cli.steer_cmd", "CREST steering: calibrate vectors"),
    "cache": ("reasonloom.cli.cache_cmd", "a shared call cache: stats or clear"),
    "report": ("reasonloom.cli.report_cmd", "one self-contained HTML page explaining a run"),
}


class UsageError(Exception):
    """A mistake in what the user typed: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, exit 2 (argparse prints usage too)
        print(f"reasonloom: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported (the others are listed by name)."""
    parser = _Parser(prog="reasonloom", description=__doc__)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="the engines' own log on stderr (default: a file under "
                            "$REASONLOOM_HOME/logs/)")
        if name != only:
            continue
        p.set_defaults(_module=module, _name=name)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("reasonloom"):
                p.set_defaults(_missing=True)
                continue
            raise
        adder: Callable = getattr(mod, f"add_{name}_arguments", None) or mod.add_arguments
        adder(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if a in SUBCOMMANDS), None))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "_missing", False):
        print(f"reasonloom: `{args.command}` is not available in this build", file=sys.stderr)
        return 2
    from reasonloom.cli.console import route_engine_output

    route_engine_output(args.verbose)   # stdout carries answers only, in every command
    mod = importlib.import_module(args._module)
    runner = getattr(mod, f"{args._name}_main", None) or mod.main
    try:
        return int(runner(args) or 0)
    except UsageError as exc:
        print(f"reasonloom {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reasonloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
