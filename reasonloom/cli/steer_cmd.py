"""`reasonloom steer`: calibrate CREST steering vectors, or generate synthetic traces.

    reasonloom steer traces --out traces.jsonl --count 600
    reasonloom steer calibrate --model-dir embedded --traces traces.jsonl --out steer/
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("calibrate", "traces"),
                        help="calibrate: fit probes and vectors; traces: write synthetic traces")
    parser.add_argument("--model-dir", default="embedded",
                        help="HF model folder, or `embedded` for the built-in SmolLM2")
    parser.add_argument("--traces", help="calibration traces, JSONL with `question` and `trace`")
    parser.add_argument("--out", required=True, help="output folder (calibrate) or file (traces)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="heads to keep (default: 38%% of all heads)")
    parser.add_argument("--strength", type=float, default=-1.0, help="default lambda")
    parser.add_argument("--keywords", default=None,
                        help="comma-separated step openings that mark a verification step")
    parser.add_argument("--separator", default="\\n\\n",
                        help="step separator, backslash escapes allowed (default \\n\\n)")
    parser.add_argument("--count", type=int, default=600, help="traces to generate (traces)")
    parser.add_argument("--seed", type=int, default=0)


def _model_dir(name: str) -> Path:
    if name == "embedded":
        # Lazy: only `--model-dir embedded` needs the backend's model conversion.
        from reasonloom.backends.vllm.embedded import ensure_embedded_model

        return ensure_embedded_model()
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a model folder (no config.json)")
    return path


def main(args: argparse.Namespace) -> int:
    from reasonloom.steering.traces import arithmetic_traces, read_traces, write_traces

    if args.action == "traces":
        path = write_traces(args.out, arithmetic_traces(args.count, seed=args.seed))
        print(f"wrote {args.count} synthetic traces to {path}")
        return 0
    if not args.traces:
        print("reasonloom steer calibrate: --traces FILE.jsonl is required", file=sys.stderr)
        return 2
    if not Path(args.traces).exists():
        print(f"reasonloom steer calibrate: {args.traces} does not exist", file=sys.stderr)
        return 2
    from reasonloom.steering.calibrate import (DEFAULT_KEYWORDS, CalibrationConfig, calibrate,
                                               summary, traces_file_info)

    keywords = tuple(k.strip() for k in args.keywords.split(",") if k.strip()) \
        if args.keywords else DEFAULT_KEYWORDS
    separator = args.separator.encode().decode("unicode_escape")
    cfg = CalibrationConfig(separator=separator, keywords=keywords, top_k=args.top_k,
                            default_strength=args.strength, seed=args.seed)
    try:
        manifest = calibrate(_model_dir(args.model_dir), read_traces(args.traces), args.out, cfg,
                             traces_info=traces_file_info(args.traces))
    except ValueError as exc:
        print(f"reasonloom steer calibrate: {exc}", file=sys.stderr)
        return 2
    print(summary(manifest))
    return 0
