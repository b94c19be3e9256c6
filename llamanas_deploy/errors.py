"""Typed errors. The CLI turns `BadInputError` into one line on stderr and exit code 2."""


class LlamanasError(Exception):
    """Anything the toolkit could not do (exit code 1)."""


class BadInputError(LlamanasError):
    """The user gave something malformed or inconsistent: a file, a value, a directory (exit code 2).

    The message names the file or value and says what was expected and what came. When the
    culprit is a parameter of a library call, `param` names it as the settings field or
    argument is called (`"max_latency_ms"`): the message reads "max_latency_ms: ...", and
    the CLI shows the flag that fills that parameter instead (`--max-latency: ...`).
    """

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        self.detail = message
        super().__init__(f"{param}: {message}" if param else message)


class VerificationError(LlamanasError):
    """An artifact or measurement failed its own checks (exit code 1)."""
