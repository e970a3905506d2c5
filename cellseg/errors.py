"""Errors that cellseg reports to its users."""

from __future__ import annotations


class CellsegError(Exception):
    """An error caused by the user's input or configuration.

    The message names the offending file or option and says how to fix it. The
    command line prints it without a traceback and exits with status 2.
    """


class InputError(CellsegError):
    """An input scan cannot be used (unreadable, wrong dimensions, empty, ...)."""


class ConfigError(CellsegError):
    """A configuration value or command-line option is invalid."""
