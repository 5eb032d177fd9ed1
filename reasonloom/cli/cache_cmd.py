"""`reasonloom cache stats|clear [PATH]`: look into or empty a shared call cache (`--cache`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reasonloom.orchestrator.cache import cache_stats, clear_cache, default_shared_cache


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("stats", "clear"))
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="the cache file (default $REASONLOOM_HOME/cache.sqlite)")
    p.add_argument("--json", action="store_true", help="stats as one JSON line")


def main(args: argparse.Namespace) -> int:
    path = Path(args.path).expanduser() if args.path else default_shared_cache()
    if args.action == "clear":
        print(f"cleared {clear_cache(path)} cached calls from {path}")
        return 0
    stats = cache_stats(path)
    if args.json:
        print(json.dumps(stats))
    elif not stats["exists"]:
        print(f"{path}: no cache there yet")
    else:
        print(f"{path}: {stats['calls']} cached calls, {stats['bytes'] / 1e6:.1f} MB")
        for model, count in stats["by_model"].items():
            print(f"  {model}: {count}")
    return 0
