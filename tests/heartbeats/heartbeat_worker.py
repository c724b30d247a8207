"""Runs an integration test app with ``App.run_worker`` and a fast heartbeat, in its own
process: ``python -m tests.heartbeats.heartbeat_worker MODULE INTERVAL RETENTION``.

``MODULE`` is one of the ``tests.integration.*_worker_app`` modules (their environment
variables name the backend); the worker stops on SIGTERM like ``taskflow worker``.
"""

from __future__ import annotations

import importlib
import sys


def main() -> None:
    """Run the module's ``app`` until SIGTERM/SIGINT."""
    module, interval, retention = sys.argv[1:4]
    app = importlib.import_module(module).app
    app.run_worker(
        concurrency=2,
        heartbeat=float(interval),
        heartbeat_retention=float(retention),
        grace=5.0,
        connect_timeout=20.0,
    )


if __name__ == "__main__":
    main()
