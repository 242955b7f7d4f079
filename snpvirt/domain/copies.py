"""The renamed copies of one spec (a fleet's `count = N`: db-1 ... db-N) rendered once, not N times.

Copies differ only in their name: in <name>, in the spec's JSON in the metadata and its digest, and in
names made from it (the cloud-init seed's volume). So the document of the first copy is rendered with a
placeholder name, and each copy's document is that text with the placeholder replaced by its name and
the placeholder spec's digest by its own. This holds only where every use of the name in the document
is the name itself (a domain name is escaped alike in XML and JSON: NAME_RE), which
tests/unit/domain/test_copies.py checks against a fresh render over generated specs. Whatever else
differs (any other field, the stamp, the seed, the launch files) is a new render. The caller still
checks every copy's document (the SNP rules, and libvirt's copy after define): this saves the render,
not a check.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

from snpvirt.domain import render
from snpvirt.domain.spec import NAME_RE
from snpvirt.errors import SnpvirtError
from snpvirt.models import VmSpec

# A valid domain name no spec uses by accident; a spec whose text contains it is rendered afresh.
PLACEHOLDER = "snpvirt-copy-name-9d41f0c7"


@dataclasses.dataclass(frozen=True)
class _Rendered:
    shape: VmSpec  # the spec with the placeholder name
    context: Any  # what the render took besides the spec (stamp times, digests, seed)
    xml: str
    digest: str  # the placeholder spec's digest, as the document holds it


class CopyRenderer:
    """Remembers the last spec shape rendered (one Manager plans one host's specs in order, and a fleet's
    copies come one after another). Safe to share between threads: the memory is one attribute."""

    def __init__(self) -> None:
        self._last: _Rendered | None = None

    def render(self, spec: VmSpec, context: Any, fresh: Callable[[VmSpec], str]) -> str:
        """`fresh(spec)`: the full render of a spec. `context`: everything else `fresh` depends on (compared
        with ==), so a copy is made only from a document rendered the same way."""
        shape = _shape(spec)
        if shape is None:
            return fresh(spec)
        text = render.spec_json(spec)
        if PLACEHOLDER in text:
            return fresh(spec)
        last = self._last
        if last is None or last.context != context or last.shape != shape:
            try:
                last = _Rendered(shape, context, fresh(shape), _digest(render.spec_json(shape)))
            except SnpvirtError:
                return fresh(spec)  # the error again, about this spec (never about the placeholder)
            self._last = last
        return last.xml.replace(PLACEHOLDER, spec.name).replace(last.digest, _digest(text))


def _shape(spec: VmSpec) -> VmSpec | None:
    """The spec with the placeholder for its name, or None when its name is not only its name (a source
    that records another name, or a name that escaping would change)."""
    if spec.source.get("name") != spec.name or not NAME_RE.fullmatch(spec.name):
        return None
    return dataclasses.replace(spec, name=PLACEHOLDER, source={**spec.source, "name": PLACEHOLDER})


def _digest(spec_text: str) -> str:
    return hashlib.sha256(spec_text.encode()).hexdigest()
