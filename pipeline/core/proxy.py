"""Serve a study storage to many workers through Optuna's gRPC storage proxy.

    python -m pipeline.core.proxy postgresql://USER@HOST/DB [--host 0.0.0.0] [--port 13000]

Workers then use search.storage=grpc://PROXYHOST:13000: each talks to the proxy, and only the
proxy holds connections to the database (PostgreSQL's max_connections, 100 by default, is
reached long before hundreds of workers). The URL may be ${oc.env:NAME}-free here: pass it
from the environment, e.g. "$OPTUNA_STORAGE".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.core.errors import ConfigError
from pipeline.core.secrets import mask


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.core.proxy", description=__doc__)
    parser.add_argument("storage", help="the storage the proxy serves (not a grpc:// URL)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=13000)
    args = parser.parse_args(argv)
    from optuna.storages import run_grpc_proxy_server

    from pipeline.core.storage import open_storage

    try:
        if args.storage.startswith("grpc://"):
            raise ConfigError("storage", "a proxy serves a database or a journal file, not a proxy")
        storage = open_storage(args.storage, key="storage")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {mask(args.storage)} on {args.host}:{args.port}", flush=True)
    try:
        run_grpc_proxy_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
