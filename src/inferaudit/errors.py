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
    """What the user asked for is wrong: a flag, an option, a protocol value, a path to read or
    write (missing, unreadable, in the way), a name not in the catalog."""


class DataError(InferauditError):
    """Stored or received data is not what its format says: a file or message that does not
    parse, has the wrong shape or encoding, or is not canonical (e.g. a summary, spec, claims
    file, fingerprint, tokenizer file, statement). The data is at fault, not the command."""


class RecordError(DataError):
    """A request record is malformed, or inconsistent in itself or with the protocol (timings
    out of order, counts that disagree with the chunks): ``records.jsonl`` or a worker's line."""


class EndpointError(InferauditError):
    """The endpoint cannot be used at all (unreachable, wrong model, refuses every request)."""


class ClientOverloadError(InferauditError):
    """The load client could not keep up with its own schedule."""


class WorkerError(InferauditError):
    """A load worker process failed or died; the records written before it are kept."""


class StorageError(InferauditError):
    """A run file cannot be written (disk full, permissions); what was written whole is kept."""


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
