"""Exit codes and the error classes every layer raises (docs/architecture.md, "Conventions")."""

from __future__ import annotations

import enum
import re


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    BAD_INPUT = 2
    NOT_READY = 3
    NOT_FOUND = 4
    CONFLICT = 5
    CONNECTION = 6
    TIMEOUT = 7
    PARTIAL = 9


class SnpvirtError(Exception):
    """An error the user can act on: one message line, one hint line, an exit code."""

    kind = "failure"
    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInputError(SnpvirtError):
    """The spec, an option or a file given by the user is wrong (exit 2)."""

    kind = "bad_input"
    exit_code = ExitCode.BAD_INPUT


class NotFoundError(SnpvirtError):
    kind = "not_found"
    exit_code = ExitCode.NOT_FOUND


class ConnectionFailedError(SnpvirtError):
    kind = "connection"
    exit_code = ExitCode.CONNECTION


class HostNotReadyError(SnpvirtError):
    kind = "not_ready"
    exit_code = ExitCode.NOT_READY


class ConflictError(SnpvirtError):
    """A domain snpvirt must not touch: not managed by it, or another UUID (exit 5)."""

    kind = "conflict"
    exit_code = ExitCode.CONFLICT


class StartFailedError(SnpvirtError):
    kind = "start_failed"
    exit_code = ExitCode.FAILURE


class OperationTimeoutError(SnpvirtError):
    kind = "timeout"
    exit_code = ExitCode.TIMEOUT


def exit_code_of(kind: str) -> ExitCode:
    """The exit code that goes with an envelope's error kind: the contract scripts rely on (a batch whose
    items failed exits 9, PARTIAL, whatever the first failure's kind)."""
    return _EXIT_CODES.get(kind, ExitCode.FAILURE)


_EXIT_CODES = {cls.kind: cls.exit_code for cls in (SnpvirtError, BadInputError, NotFoundError, ConnectionFailedError,
                                                    HostNotReadyError, ConflictError, StartFailedError,
                                                    OperationTimeoutError)}
_EXIT_CODES.update({"usage": ExitCode.BAD_INPUT, "partial": ExitCode.PARTIAL})
ERROR_KINDS = tuple(_EXIT_CODES)


_SECRET_NAME = re.compile(r"key|secret|passw|token|private|credential", re.IGNORECASE)
_SECRET_TEXT = re.compile(r"-----BEGIN|PRIVATE KEY", re.IGNORECASE)
NOT_REPEATED = "the value given (not repeated: it may be a secret)"


def quoted(value: object, name: str = "") -> str:
    """A rejected value for an error message, or a placeholder where it could be a secret: a key
    pasted inline instead of its file name must not end up in terminals, logs and CI output."""
    if _SECRET_NAME.search(name) or _SECRET_TEXT.search(str(value)):
        return NOT_REPEATED
    return repr(value)
