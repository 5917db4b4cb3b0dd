"""Named crash points, so crash-safety tests kill a writer at an exact step, not after a sleep.

`crash_point("append:before-commit")` does nothing unless the environment variable
`KONTROL_CRASH_AT` names that point; then the process SIGKILLs itself there (no cleanup, no
flush), exactly like a power cut or the OOM killer at that line.
"""

from __future__ import annotations

import os
import signal

ENV = "KONTROL_CRASH_AT"


def crash_point(name: str) -> None:
    """Kill this process here if the test harness asked for it."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
