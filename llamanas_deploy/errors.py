"""Typed errors. The CLI turns `BadInputError` into one line on stderr and exit code 2."""


class LlamanasError(Exception):
    """Anything the toolkit could not do (exit code 1)."""


class BadInputError(LlamanasError):
    """The user gave something malformed or inconsistent: a file, a flag, a directory (exit code 2).

    The message names the file or option and says what was expected and what came.
    """


class VerificationError(LlamanasError):
    """An artifact or measurement failed its own checks (exit code 1)."""
