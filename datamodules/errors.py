"""Errors that stop a run before training with a message a user can act on."""


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the allowed values."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the message names the step."""


class Interrupted(Exception):
    """SIGTERM or SIGINT ended the run; ``signum`` gives the exit code 128 + signum that shells expect."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
