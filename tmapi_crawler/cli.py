"""What the project's commands share: checked settings, quiet pipes, commands named as typed.

Kept outside ``tmapi_crawler.commands``: Scrapy takes every command class defined there for a
command of its own.

* Every command checks the settings before it does anything (``tmapi_crawler.validation``): a
  bad value or a misspelt name ends it with one line and exit status 2, before any API call or
  server start; a token given with ``-s``, or a ``TMAPI_*`` environment variable that names no
  setting, draws a warning.
* Output cut short by its reader (``scrapy status | head``) ends a command quietly, as it
  does for any Unix tool, instead of with a ``BrokenPipeError`` traceback.
* A command that tells the user what to run next names it so that it works as printed
  (``shell.command_line``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.conf import arglist_to_dict

from settings_profiles import apply_profile
from tmapi_crawler.alerts.rules import RulesError
from tmapi_crawler.alerts.rules import load as load_alerts
from tmapi_crawler.validation import (
    SettingError,
    check_names,
    check_settings,
    unknown_environment,
)

if TYPE_CHECKING:
    import argparse

    from scrapy.settings import BaseSettings

#: Exit status of a command refused before it did anything (bad argument or setting).
USAGE_ERROR = 2
#: Exit status of a crawl that ran to its end without reading everything it was asked for
#: (``crawl_runs.complete`` false): a part no split reaches, a stale stop, pages given up.
INCOMPLETE = 3
#: Exit status of a command whose reader went away, as if SIGPIPE had ended it (128 + 13).
BROKEN_PIPE = 128 + signal.SIGPIPE


def fail(message: str, status: int = USAGE_ERROR) -> NoReturn:
    """End the command with one line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def note(message: str) -> None:
    """A line for people: on stderr, so stdout stays for what scripts read."""
    print(message, file=sys.stderr)


def _pipe_safe(run: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(run)
    def wrapper(self: ScrapyCommand, args: list[str], opts: argparse.Namespace) -> None:
        try:
            run(self, args, opts)
            sys.stdout.flush()
        except BrokenPipeError:
            # Python's documented way out: stdout goes nowhere, so the interpreter's own flush
            # at exit cannot raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            self.exitcode = BROKEN_PIPE

    wrapper.pipe_safe = True  # type: ignore[attr-defined]
    return wrapper


class ProjectCommand(ScrapyCommand):
    """Base of the project's commands: settings checked up front, and a pipe-safe ``run``.

    Every subclass's own ``run`` is wrapped when the class is defined, so a command (or a
    command base) gets this by deriving from it, without calling anything.
    """

    requires_project = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "pipe_safe", False):
            cls.run = _pipe_safe(run)  # type: ignore[method-assign]

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        assert self.settings is not None
        apply_profile(self.settings)  # a Scrapyd job picks its profile with a setting
        check_project_settings(self.settings)


class SpiderArguments(ScrapyCommand):
    """Mixin for a command that takes one spider name and ``-a NAME=VALUE`` arguments, as
    ``scrapy crawl`` does (``opts.spargs`` a dict once options are processed)."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-a", dest="spargs", action="append", default=[],
                            metavar="NAME=VALUE", help="spider argument (may be repeated)")

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        try:
            opts.spargs = arglist_to_dict(opts.spargs)
        except ValueError:
            raise UsageError("Invalid -a value, use -a NAME=VALUE", print_help=False) from None
        if len(args) != 1:
            raise UsageError("give exactly one spider name")


def check_project_settings(settings: BaseSettings) -> None:
    """Exit 2 with one line on a bad setting or an unknown name under the project's prefixes;
    warn about a token on the command line and about ``TMAPI_*`` environment variables that
    name no setting (a typo would be silently ignored)."""
    if (settings.get("TMAPI_TOKEN")
            and settings.getpriority("TMAPI_TOKEN") == SETTINGS_PRIORITIES["cmdline"]):
        note("warning: TMAPI_TOKEN given with -s is visible to every user of this machine "
             "(ps) and stays in your shell history; export TMAPI_TOKEN=... instead")
    for name, suggestion in unknown_environment(os.environ):
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        note(f"warning: environment variable {name} names no setting{hint}: it is ignored")
    try:
        check_names(settings)
        check_settings(settings)
        check_alerts_file(settings)
    except SettingError as exc:
        fail(str(exc))


def check_alerts_file(settings: BaseSettings) -> None:
    """Raise :class:`SettingError` for an alerts file whose rules are refused: checked with
    the settings, before anything starts, but by the alerts' own schema (``alerts.rules``),
    which the settings' registry (``validation``, at the bottom of the house) cannot know."""
    if alerts_file := settings.get("TMAPI_ALERTS_FILE"):
        try:
            load_alerts(alerts_file)
        except RulesError as exc:
            raise SettingError(f"TMAPI_ALERTS_FILE: {exc}") from None
