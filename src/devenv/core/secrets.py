"""What counts as a secret, and how it is shown: never."""

from __future__ import annotations

import re

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE|CREDENTIAL)", re.I)
MASK = "********"


def looks_secret(name: str) -> bool:
    """A variable or key whose name says it holds a secret (DB_PASSWORD, API_KEY, …)."""
    return bool(SECRET_NAME.search(name))
