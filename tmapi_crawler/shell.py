"""How the user types the project's commands: ``scrapy <words>`` as it works when printed.

At the bottom of the house: the commands, the embedded servers' errors and the demo all tell
the user what to run next, from the current folder, in a shell with no virtual environment
activated.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: Scrapy with the project's environment, set up on first use; no venv to activate.
WRAPPER = PROJECT_ROOT / "scripts" / "scrapy"
#: Profiles that need no ``SCRAPY_PROJECT=`` in front of a command (``scrapy.cfg``).
_DEFAULT_PROFILES = ("", "default", "local")


def command_line(*words: str, profile: bool = False) -> str:
    """``scrapy <words>`` as the user types it here, in a fresh shell, from the current folder.

    ``profile``: the command depends on the settings profile, so the current
    ``SCRAPY_PROJECT`` is spelled out in front of it.
    """
    cwd = Path.cwd().resolve()
    inside = cwd == PROJECT_ROOT or PROJECT_ROOT in cwd.parents
    program = os.path.relpath(WRAPPER, cwd) if inside else "scripts/scrapy"
    line = " ".join([program, *(shlex.quote(word) for word in words)])
    chosen = os.environ.get("SCRAPY_PROJECT", "")
    if profile and chosen not in _DEFAULT_PROFILES:
        line = f"SCRAPY_PROJECT={shlex.quote(chosen)} {line}"
    return line if inside else f"cd {shlex.quote(str(PROJECT_ROOT))} && {line}"
