"""Where `make demo`'s name-server address service listens, and the token that changes its answers.

Both the demo (which starts the service) and the harness's Airflow (whose `address_service`
connection switches it) read them from here.
"""

from __future__ import annotations

import os
import secrets

from rocketmq_harness.clusters import RUN_DIR

DEMO_DIR = RUN_DIR / "demo"
ADDRESS_PORT = int(os.environ.get("RMQ_DEMO_ADDRESS_PORT", "18081"))
#: What the members are told as -Drocketmq.namesrv.domain (a container names the service's host).
ADDRESS_DOMAIN = os.environ.get("RMQ_DEMO_ADDRESS_DOMAIN", f"127.0.0.1:{ADDRESS_PORT}")
TOKEN_FILE = DEMO_DIR / "address-service.token"


def address_token() -> str:
    """The bearer token, made on first use and readable by this user only."""
    if not TOKEN_FILE.exists():
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made meanwhile by another process
            return TOKEN_FILE.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24))
    return TOKEN_FILE.read_text().strip()
