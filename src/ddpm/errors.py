"""Errors raised for bad input. The CLI prints them as one line and exits with status 2."""


class DdpmError(Exception):
    """Bad input from the user: says what is wrong, where, and what to do.

    The message speaks of the library's parameters by name ("n must be >= 1"); ``params``
    lists the names it uses, so the command line can say its flags instead
    (``ddpm.cli.main.in_flags``).
    """

    def __init__(self, message: str = "", *, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


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
    """Raise ConfigError unless value is one of choices (name: the parameter)."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        params = (name,) if name.isidentifier() else ()
        raise ConfigError(f"unknown {name} {value!r}: choose one of {opts}", params=params)
