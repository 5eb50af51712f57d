"""Errors raised at the edges (CLI, config, data files).

Each carries a one-line message that names the problem and the fix. The CLI prints
``error: <message>`` and exits with :attr:`UsageError.exit_code` instead of a traceback.
"""


class UsageError(Exception):
    """Bad input from the user: unknown model or dataset, malformed option, bad file."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid (e.g. an even ``d_conv`` for Hydra4Rec)."""


class Interrupted(UsageError):
    """Training stopped by SIGINT / SIGTERM; the message names the command that resumes it."""

    exit_code = 130
