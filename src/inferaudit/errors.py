"""One error root for everything a user can cause; the CLI prints its one-line diagnostics."""

from __future__ import annotations


class InferauditError(Exception):
    """Base of all errors caused by input, configuration or the endpoint under test.

    Bugs in inferaudit itself are plain ``AssertionError``/``Exception`` and are not caught here.
    """

    def diagnostics(self) -> str:
        """One line a user can act on."""
        return str(self)


class ConfigError(InferauditError):
    """A flag, file or protocol value is wrong."""


class EndpointError(InferauditError):
    """The endpoint cannot be used at all (unreachable, wrong model, refuses every request)."""


class ClientOverloadError(InferauditError):
    """The load client could not keep up with its own schedule."""


class VerificationError(InferauditError):
    """An artefact failed verification."""


class LedgerError(InferauditError):
    """The transparency log refused an operation or is inconsistent."""


class ClaimsError(InferauditError):
    """A claim record is malformed or conflicts with the registry."""


def validation_message(exc: ValueError) -> str:
    """The first problem of a pydantic ``ValidationError`` as one line: ``where: what``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    first = errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    what = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {what}" if where else what
