"""Helpers shared by the benchmarks: data location, result files, machine description."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def data_dir() -> Path:
    """`${REASONLOOM_DATA:-../shared/data}`, relative to the repository root."""
    raw = os.environ.get("REASONLOOM_DATA", "../shared/data")
    path = Path(raw)
    return path if path.is_absolute() else (ROOT / path).resolve()


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.system()}"


def python_version() -> str:
    return sys.version.split()[0]


def add_pool_arguments(parser, problems: int) -> None:
    """The options of the benchmarks that read the shared gsm8k sample pool on a server."""
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="qwen05")
    parser.add_argument("--quick", action="store_true", help="40 problems")
    parser.add_argument("--problems", type=int, default=problems)
    parser.add_argument("--split", choices=("tune", "report"), default="report")
    parser.add_argument("--tag", default="", help="suffix of the split's rows (a tuning trial)")
    parser.add_argument("--settings", help="JSON overriding SETTINGS (tuning only)")
    parser.add_argument("--cache", default=os.environ.get(
        "REASONLOOM_POOL", str(Path.home() / ".cache" / "reasonloom" / "gsm8k_pool.sqlite")))


def write_result(name: str, payload: dict, keep_previous: bool = False) -> Path:
    """Write `results/NAME.json`; with keep_previous, earlier runs move under `previous_runs`."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    if keep_previous and path.exists():
        old = json.loads(path.read_text())
        payload = {**payload, "previous_runs": old.pop("previous_runs", []) + [old]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*(str(x) for x in row)))


def read_rows(path: Path) -> list[dict]:
    """A resumable benchmark's finished rows (JSON lines; none when the file is missing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.open() if line.strip()]


def billed(usage) -> dict:
    """A usage total (reasonloom's Usage) with calls replayed from a shared cache priced at what
    they cost when they were made: a pooled sample is not free for the method that reads it."""
    return {"calls": usage.calls, "cached_calls": usage.cached_calls,
            "prompt_tokens": usage.prompt_tokens + usage.replayed_prompt_tokens,
            "completion_tokens": usage.completion_tokens + usage.replayed_completion_tokens,
            "cost_usd": usage.cost_usd + usage.replayed_cost_usd}
