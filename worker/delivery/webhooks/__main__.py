"""``python -m worker.delivery.webhooks``: the Celery worker that sends webhook deliveries (queue ``guardq.webhooks``).

Usually started by ``guardq webhooks worker``, which also runs the dispatcher and scheduler loops.
"""

from __future__ import annotations

import os
import socket
import sys

from schemas.errors import ConfigError
from schemas.logs import configure_logging
from schemas.settings import load_settings


def main(argv: list[str]) -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"guardq webhooks worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_format, settings.log_level)
    from worker.delivery.webhooks.app import app

    hostname = next((a.split("=", 1)[1] for a in argv if a.startswith("--hostname=")), None)
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.webhook_concurrency}",
            "--queues=guardq.webhooks",
            f"--hostname={hostname or f'webhooks-{os.getpid()}@{socket.gethostname()}'}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
