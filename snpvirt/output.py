"""Everything snpvirt prints: the JSON envelope, error lines, plain-text tables."""

from __future__ import annotations

import codecs
import json
import re
import sys
from typing import Any, Iterable, Sequence

from snpvirt.errors import SnpvirtError


def envelope(ok: bool, changed: bool = False, results: list[dict[str, Any]] | None = None,
             error: SnpvirtError | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": ok, "changed": changed, "results": results or []}
    doc.update(extra)
    if error is not None:
        doc["error"] = {"kind": error.kind, "message": error.message, "hint": error.hint}
    return doc


# A file name that is not UTF-8 reaches Python as lone surrogates (PEP 383); no UTF-8 text can carry them.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


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


def print_error(message: str, hint: str = "") -> None:
    sys.stderr.write(f"snpvirt: error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def print_warning(message: str, hint: str = "") -> None:
    sys.stderr.write(f"snpvirt: warning: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain left-aligned table; the last column is never padded."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])) + ("  " if len(cells) > 1 else "") + cells[-1]

    return "\n".join([line(headers)] + [line(r) for r in rows])
