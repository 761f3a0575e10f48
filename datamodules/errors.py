"""Errors that stop a run before training with a message a user can act on."""

import re


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the allowed values."""


class NotWritable(Exception):
    """A run's file or folder could not be written (a full disk, a read-only folder); the message names it."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


class Interrupted(Exception):
    """SIGTERM or SIGINT ended the run; ``signum`` gives the exit code 128 + signum that shells expect."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def one_line(err: Exception) -> str:
    """A user error as one line: a DataError listing several bad rows (``read_rows``) gives its first row's message,
    then the other rows' line numbers; any other message's lines are joined. A list that stopped at its first N bad
    rows says so ("and at least N-1 more"), so that N is not read as the file's total."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines or not re.match(r"\d+ bad row\(s\) in ", lines[0]):
        return "; ".join(lines)
    if len(lines) <= 2:
        return lines[-1]
    rest = [line.split(": ", 1)[0].rsplit(":", 1)[-1] for line in lines[2:]]
    stopped = re.search(r"\(stopped at the first (\d+)\)", lines[0])
    if stopped:
        return (f"{lines[1]} (and at least {len(rest)} more bad row(s), line(s) {', '.join(rest)}; "
                f"stopped at the first {stopped.group(1)})")
    return f"{lines[1]} (and {len(rest)} more bad row(s), line(s) {', '.join(rest)})"
