"""`reasonloom serve --recipes DIR`: every recipe in DIR becomes a model of an OpenAI-compatible
server (`model` = the file name without `.yaml`)."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

API_KEY_ENV = "REASONLOOM_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", required=True, metavar="DIR", help="folder of recipe files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", metavar="KEY", help=f"required bearer key (default: "
                   f"${API_KEY_ENV}, which may list several keys separated by commas; prefer "
                   f"the variable: arguments show in `ps`)")
    p.add_argument("--max-running", type=int, default=64, metavar="N",
                   help="runs in progress at once; more get 429 (default 64)")
    p.add_argument("--max-running-per-key", type=int, default=None, metavar="N",
                   help="runs one API key may have in progress at once; more get 429 "
                   "(default: no per-key limit)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="close a connection whose request headers are not in after S seconds")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="a request body must arrive within S seconds (else 400)")
    p.add_argument("--idle-timeout", type=float, default=5.0, metavar="S",
                   help="close a keep-alive connection idle for S seconds")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one line per request (method, path, status; never headers)")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main(args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from reasonloom.serve.app import create_app
    from reasonloom.serve.catalog import Catalog
    from reasonloom.serve.limits import header_deadline, raise_fd_limit

    os.umask(0o077)   # whatever the server writes (logs, caches) is private

    if not os.path.isdir(args.recipes):
        print(f"reasonloom serve: --recipes {args.recipes}: no such folder", file=sys.stderr)
        return 2
    if args.max_running < 1 or (args.max_running_per_key is not None
                                and args.max_running_per_key < 1):
        print("reasonloom serve: --max-running and --max-running-per-key must be at least 1",
              file=sys.stderr)
        return 2
    raw_keys = args.api_key or os.environ.get(API_KEY_ENV) or ""
    api_keys = [key.strip() for key in raw_keys.split(",") if key.strip()]
    catalog = Catalog.from_dir(args.recipes, server_keys=api_keys)
    if not catalog.recipes:
        print(f"reasonloom serve: no recipe in {args.recipes} loads", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"reasonloom serve: cannot listen on {args.host}:{args.port}: {exc.strerror}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: "
                        "%(message)s")
    app = create_app(catalog, api_key=api_keys, max_running=args.max_running,
                     max_running_per_key=args.max_running_per_key,
                     max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout)
    port = sock.getsockname()[1]
    print(f"reasonloom serve: {len(catalog.recipes)} models at http://{args.host}:{port}/v1 "
          f"({', '.join(sorted(catalog.recipes))}); key "
          f"{'required' if api_keys else 'not required'}", file=sys.stderr, flush=True)
    fds = raise_fd_limit()
    logging.getLogger("reasonloom.serve").info("open-file limit %d; header/body/idle timeouts "
                                               "%g/%g/%g s", fds, args.header_timeout,
                                               args.body_timeout, args.idle_timeout)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                            timeout_graceful_shutdown=5, backlog=4096,
                            timeout_keep_alive=max(1, round(args.idle_timeout)),
                            http=header_deadline(AutoHTTPProtocol, args.header_timeout))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:   # uvicorn re-raises the Ctrl-C it handled: a clean stop
        pass
    return 0
