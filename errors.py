"""Errors that stop a run before training with a message a user can act on."""


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the allowed values."""
