"""The crawler's data folders (``.data/mongodb``, ``.data/redis``, spills, logs) are the
user's alone: they hold every product crawled, the servers' files and logs that name queries.

One helper makes them all, so none is left to the umask (0755 on most systems).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Read, write and enter for the user only.
PRIVATE = 0o700


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` and any missing parent 0700; a folder that exists already is left as
    it is (it may be the user's own choice, shared on purpose)."""
    folder = Path(path)
    missing = [part for part in (folder, *folder.parents) if not part.exists()]
    for part in reversed(missing):
        try:
            part.mkdir(mode=PRIVATE)
        except FileExistsError:  # made meanwhile by a process started alongside
            continue
        part.chmod(PRIVATE)  # mkdir's mode is masked by the umask
    return folder
