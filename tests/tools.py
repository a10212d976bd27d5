"""Outside programs the suite runs (Chromium, docker-compose, redis-server, mariadbd).

``make test`` installs them (``scripts/install_test_tools.sh``), so a missing one is a failure
that says what to install, not a silent skip. ``SKIP_MISSING_TOOLS=1`` turns that failure into
a skip, for a developer who asks for it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SKIP_ENV = "SKIP_MISSING_TOOLS"


def require_tool(program: str, package: str) -> str:
    """The path of ``program`` (a name on PATH or an absolute path), or fail (skip if asked)."""
    found = program if Path(program).is_absolute() and Path(program).exists() else (
        shutil.which(program))
    if found:
        return found
    reason = (f"{program} is not installed: `make test` installs it (Debian package "
              f"{package}); {SKIP_ENV}=1 skips the tests that need it")
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(reason)
    pytest.fail(reason, pytrace=False)
