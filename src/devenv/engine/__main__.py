"""`python -m devenv.engine ROOT`: take the project's engine lock first, with the stdlib
only, so that a losing engine of concurrent `up` calls exits at once; then serve."""

import fcntl
import sys
from pathlib import Path

from devenv.core.paths import StateDir

state = StateDir(Path(sys.argv[1]).resolve())
state.ensure()
lock = open(state.lock, "a+")  # noqa: SIM115 - held for the engine's lifetime
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("another engine already serves this project", flush=True)
    sys.exit(0)

from devenv.engine.daemon import main  # noqa: E402 - only once the lock is ours

sys.exit(main(sys.argv[1:], lock))
