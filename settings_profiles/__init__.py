"""Settings profiles: each module overlays ``tmapi_crawler.settings`` for one way of running.

Chosen the Scrapy way — ``scrapy.cfg`` maps names to modules under ``[settings]`` and
``SCRAPY_PROJECT=<name>`` picks one (``default`` when unset):

* ``local`` (the default): one process, its own queue and concurrency limit;
* ``distributed``: workers on any number of machines share a Redis queue and one limit;
* ``production``: ``distributed`` tuned for long unattended crawls.

Where no environment variable can be set per run — a Scrapyd job, started by ``schedule.json``
— the setting ``TMAPI_PROFILE=<name>`` picks the profile instead (``-s TMAPI_PROFILE=...``,
``-d setting=TMAPI_PROFILE=...``): :func:`apply_profile` overlays it before anything else reads
the settings; settings given on the command line still win.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

PROFILES: Final = ("local", "distributed", "production")
#: The spider argument Scrapyd adds to every job (its job id): not one of the spider's own.
SCRAPYD_JOB: Final = "_job"


def apply_profile(settings: BaseSettings) -> None:
    """Overlay the profile ``TMAPI_PROFILE`` names, if any; exit 2 with one line if unknown."""
    name = settings.get("TMAPI_PROFILE")
    if not name:
        return
    if name not in PROFILES:
        print(f"error: TMAPI_PROFILE: {name!r} is not one of {', '.join(PROFILES)}",
              file=sys.stderr)
        raise SystemExit(2)
    settings.setmodule(import_module(f"{__name__}.{name}"), priority="project")
