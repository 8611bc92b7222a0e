"""Errors raised for bad input. The CLI prints them as one line and exits with status 2."""


class DdpmError(Exception):
    """Bad input from the user: says what is wrong, where, and what to do."""


class ConfigError(DdpmError):
    """An invalid configuration value or combination."""


class DataError(DdpmError):
    """Missing, unreadable or malformed data."""


class CheckpointError(DdpmError):
    """A run folder or checkpoint that is missing, corrupted or does not match."""


class NonFiniteError(DdpmError):
    """A model whose outputs are not finite numbers (NaN or inf) although its weights load."""


class TooLargeError(ConfigError):
    """A request that needs more memory (or disk) than there is: refused before allocating."""


class PeerLostError(DdpmError):
    """Another process of a torchrun launch stopped while this one was waiting for it."""


def require_choice(name: str, value: object, choices: tuple) -> None:
    """Raise ConfigError unless value is one of choices."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"unknown {name} {value!r}: choose one of {opts}")
