"""Errors a user can cause. The CLI prints these as one line (no traceback) and exits with status 2."""


class KamadoError(Exception):
    """Base class: bad input or configuration, reported to the user as one clear message."""


class ConfigError(KamadoError):
    """A preset or override is wrong (unknown key, wrong type, inconsistent shape)."""


class DataError(KamadoError):
    """An input file is missing, empty, malformed, or of the wrong dtype."""


class CheckpointError(KamadoError):
    """A checkpoint folder is missing, incomplete, or does not match the model."""
