"""How a ``dfsdk`` command fails: a one-line message and a conventional exit code, never a
traceback. ``fail_on_sdk_errors`` wraps each command of dfnet4_sdk/cli.py and cli_run.py."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading

import click

from dfnet4_sdk.errors import ConfigError, DfSdkError, ModelNotAvailableError, PathError

log = logging.getLogger(__name__)

# Exit codes: 1 a failure (corrupt input, failed write), 2 a usage error (a bad option value or
# path), 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM), as shells do.
EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
USAGE_ERRORS = (ConfigError, ModelNotAvailableError, PathError)


class UsageFailure(click.ClickException):
    """A one-line "Error: ..." like any ClickException, with the usage exit code."""

    exit_code = EXIT_USAGE


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def fail_on_sdk_errors(fn):
    """Every way a command can fail, as a one-line message and a conventional exit code, never a
    traceback: the SDK's typed errors (usage errors 2, the rest 1), OS errors 1, Ctrl-C 130 and
    SIGTERM 143 (both after the command's own cleanup: no partial output is left). Anything else
    is a bug: 1, with the traceback at -vv."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            return fn(*args, **kwargs)
        except USAGE_ERRORS as e:
            raise UsageFailure(str(e)) from e
        except DfSdkError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(EXIT_SIGINT)
        except Terminated:
            click.echo("terminated; no output was written", err=True)
            sys.exit(EXIT_SIGTERM)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from e
        except Exception as e:
            log.debug("unexpected error", exc_info=True)
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e}. This is a bug; rerun with -vv for the traceback and report it"
            ) from e
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper
