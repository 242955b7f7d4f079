"""Everything snpvirt prints: the JSON envelope, error lines, plain-text tables."""

from __future__ import annotations

import codecs
import json
import re
import sys
from typing import Any, Iterable, Sequence

from snpvirt.errors import SnpvirtError


def envelope(ok: bool, changed: bool = False, results: list[dict[str, Any]] | None = None,
             error: SnpvirtError | dict[str, str] | None = None, warnings: list[dict[str, str]] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The one JSON document every command prints (docs/envelope.schema.json): ok, changed, results (each
    item with name, ok, changed and, when it failed, error), warnings (always a list) and, whenever ok is
    false, error{kind, message, hint}. Extra keys are the command's own."""
    doc: dict[str, Any] = {"ok": ok, "changed": changed, "results": results or [], "warnings": list(warnings or [])}
    doc.update(extra)
    if isinstance(error, SnpvirtError):
        doc["error"] = error_dict(error)
    elif error is not None:
        doc["error"] = error
    return doc


def result(name: str, ok: bool = True, changed: bool = False, error: SnpvirtError | dict[str, str] | None = None,
           /, **fields: Any) -> dict[str, Any]:
    """One item of an envelope's results: the shared keys first, then the command's own (a row that
    already has a name may be passed whole)."""
    item: dict[str, Any] = {"name": name, "ok": ok, "changed": changed}
    item.update((key, value) for key, value in fields.items() if key not in item)
    if error is not None:
        item["error"] = error_dict(error) if isinstance(error, SnpvirtError) else error
    return item


def check_item(check: Any, failed_kind: str = "not_ready") -> dict[str, Any]:
    """A readiness check (host check, guest check) as a result item: name is the check's id; a failed
    check carries the error a script acts on (its message and fix)."""
    failed = check.status == "fail"
    error = {"kind": failed_kind, "message": f"{check.check_id}: {check.message}",
             "hint": check.hint or "see the check's facts"} if failed else None
    return result(check.check_id, not failed, False, error, status=check.status, message=check.message,
                  hint=check.hint, facts=check.facts)


def check_warnings(checks: Iterable[Any]) -> list[dict[str, str]]:
    """The checks that passed with a warning, as the envelope's warnings (a Finding's keys)."""
    return [{"id": c.check_id, "severity": "warning", "message": c.message, "hint": c.hint}
            for c in checks if c.status == "warn"]


def error_dict(error: SnpvirtError) -> dict[str, str]:
    return {"kind": error.kind, "message": error.message, "hint": error.hint}


def batch_error(errors: list[dict[str, str]], total: int) -> dict[str, str] | None:
    """A failed batch's top-level error, so a script looks in one place: the first failure's when every
    item failed, `partial` when some succeeded. `errors` are the failed items' own errors, in order."""
    if not errors:
        return None
    first = errors[0]
    if len(errors) < total:
        return {"kind": "partial", "message": f"{len(errors)} of {total} failed; the first: {first['message']}",
                "hint": first["hint"] or "see each result's error"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return {"kind": first["kind"], "message": first["message"] + more, "hint": first["hint"]}
# A file name that is not UTF-8 reaches Python as lone surrogates (PEP 383); no UTF-8 text can carry them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def about(subject: str, message: str) -> str:
    """`subject: message`, unless the message already starts with the subject: errors raised about a file or
    a domain often name it themselves, and "trunc.bin: trunc.bin: not a report" says it twice."""
    return message if message.startswith(f"{subject}:") else f"{subject}: {message}"


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document, always valid UTF-8: undecodable bytes of a file name show as U+FFFD."""
    text = _LONE_SURROGATE.sub("\ufffd", json.dumps(doc, indent=2, ensure_ascii=False)) + "\n"
    _write_utf8(sys.stdout, text)


def _write_utf8(stream: Any, text: str) -> None:
    """JSON is UTF-8 (RFC 8259), whatever encoding the locale gives stdout."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    if codecs.lookup(encoding).name == "utf-8" or not hasattr(stream, "buffer"):
        stream.write(text)
        return
    stream.flush()
    stream.buffer.write(text.encode("utf-8"))
    stream.buffer.flush()


# C0 and C1 controls, DEL, the bidi overrides: what a terminal acts on instead of showing; and the
# line and paragraph separators, where Python's splitlines() (and so a script reading stderr) breaks a line.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\n). Messages carry what others
    chose (a certificate's CN from KDS, a file name, a libvirt error): they must not move the cursor,
    rewrite a line, set the window title or add a line that looks like snpvirt's own."""
    return _CONTROLS.sub(_escape, text) if _CONTROLS.search(text) else text


def _escape(match: re.Match) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    return named or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def print_error(message: str, hint: str = "") -> None:
    sys.stderr.write(f"snpvirt: error: {printable(message)}\n")
    if hint:
        sys.stderr.write(f"hint: {printable(hint)}\n")


def print_warning(message: str, hint: str = "") -> None:
    sys.stderr.write(f"snpvirt: warning: {printable(message)}\n")
    if hint:
        sys.stderr.write(f"hint: {printable(hint)}\n")


def print_progress(message: str) -> None:
    """A progress line for people, on stderr (never with --json: stdout holds one document, stderr errors).
    Escaped like errors: a fleet's lines carry what remote daemons said."""
    sys.stderr.write(f"snpvirt: {printable(message)}\n")
    sys.stderr.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain left-aligned table; the last column is never padded."""
    rows = [[printable(str(cell)) for cell in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])) + ("  " if len(cells) > 1 else "") + cells[-1]

    return "\n".join([line(headers)] + [line(r) for r in rows])
