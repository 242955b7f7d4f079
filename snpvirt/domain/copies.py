"""The renamed copies of one spec (a fleet's `count = N`: db-1 ... db-N) rendered once, not N times.

Copies differ only in their identity: their name (in <name>, in the spec's JSON in the metadata and its
digest, in names made from it such as the cloud-init seed's volume) and, once defined, the UUID and the
MAC addresses libvirt gave them (kept on every redefinition). So the document of the first copy is
rendered with placeholders for these, and each copy's document is that text with the placeholders
replaced by its own values and the placeholder spec's digest by its own. This holds only where every
use of them in the document is the value itself (names, UUIDs and MACs are escaped alike in XML and
JSON), which tests/unit/domain/test_copies.py checks against a fresh render over generated specs.
Whatever else differs (any other field, the stamp, the seed, the launch files) is a new render.

A caller may also check each shape once (`check_shape`, on the document with the placeholders) and have
that result stand for every copy filled in from it: apply does, for the SNP rules and the SNP projection,
which no identity value reaches (orchestration/apply.py says why). libvirt's copy of each domain is still
checked after its define.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Callable

from snpvirt.domain import render
from snpvirt.domain.spec import NAME_RE
from snpvirt.errors import SnpvirtError
from snpvirt.models import VmSpec

# Values no spec uses by accident (a spec that contains one is rendered afresh): a valid domain name, a UUID,
# and a locally administered MAC per interface.
PLACEHOLDER = "snpvirt-copy-name-9d41f0c7"
UUID_PLACEHOLDER = "9d41f0c7-c0de-4c0d-8c0d-5c0de0c0de00"
_MAC_PREFIX = "52:54:00:9d:41:"
MAC_PLACEHOLDERS = tuple(f"{_MAC_PREFIX}{i:02x}" for i in range(256))
_IDENTITY_RE = re.compile(r"[0-9A-Fa-f:-]+")  # what a UUID or a MAC address is made of: no escaping changes it


@dataclasses.dataclass(frozen=True)
class _Rendered:
    shape: VmSpec  # the spec with the placeholders for its identity
    context: Any  # what the render took besides the spec (stamp times, digests, seed)
    xml: str | None  # None: this shape's copies are rendered afresh (filling in did not give the first copy's)
    digest: str  # the placeholder spec's digest, as the document holds it
    checked: Any = None  # check_shape(xml): what stands for each filled-in copy's own check (None: no stand-in)


class CopyRenderer:
    """Remembers the last spec shape rendered (one Manager plans one host's specs in order, and a fleet's
    copies come one after another). Safe to share between threads: the memory is one attribute."""

    def __init__(self, check_shape: Callable[[str], Any] | None = None) -> None:
        self._last: _Rendered | None = None
        self._check_shape = check_shape
        self.copies_made = 0  # documents filled in rather than rendered (what the tests see of the fast path)

    def render(self, spec: VmSpec, context: Any, fresh: Callable[[VmSpec], str]) -> str:
        """`fresh(spec)`: the full render of a spec. `context`: everything else `fresh` depends on (compared
        with ==), so a copy is made only from a document rendered the same way."""
        return self.render_checked(spec, context, fresh)[0]

    def render_checked(self, spec: VmSpec, context: Any, fresh: Callable[[VmSpec], str]) -> tuple[str, Any]:
        """render(), and for a copy filled in from a shape, check_shape's result for that shape (None for a
        document rendered afresh, or when check_shape gave None or raised SnpvirtError)."""
        identity = _identity(spec)
        if identity is None:
            return fresh(spec), None
        text = render.spec_json(spec)
        if any(placeholder in text for placeholder in identity):
            return fresh(spec), None
        shape = _shape(spec)
        # The written JSON too: VmSpec's == leaves `source` out, and two specs that parse alike (a default
        # spelt out) each record their own JSON in the metadata.
        shape_digest = _digest(render.spec_json(shape))
        last = self._last
        if last is None or last.context != context or last.shape != shape or last.digest != shape_digest:
            try:
                placeholder_xml = fresh(shape)
            except SnpvirtError:
                return fresh(spec), None  # the error again, about this spec (never about the placeholders)
            own = fresh(spec)
            last = _Rendered(shape, context, placeholder_xml, shape_digest)
            # The first copy of a shape is rendered both ways: if filling the placeholders in does not give
            # its own document (a template that uses the name otherwise than as is), no copy is made of it.
            if _filled(last, identity, text) != own:
                last = dataclasses.replace(last, xml=None)
            elif self._check_shape is not None:
                last = dataclasses.replace(last, checked=self._checked(placeholder_xml))
            self._last = last
            return own, None  # the first copy is checked on its own
        if last.xml is None:
            return fresh(spec), None
        self.copies_made += 1
        return _filled(last, identity, text), last.checked

    def _checked(self, placeholder_xml: str) -> Any:
        try:
            return self._check_shape(placeholder_xml)
        except SnpvirtError:
            return None  # each copy is checked on its own, and fails with its own name


def _filled(rendered: _Rendered, identity: dict[str, str], spec_text: str) -> str:
    xml = rendered.xml.replace(rendered.digest, _digest(spec_text))
    for placeholder, value in identity.items():
        xml = xml.replace(placeholder, value)
    return xml


def _identity(spec: VmSpec) -> dict[str, str] | None:
    """placeholder -> this copy's value, or None when a value is not only itself (a source that records
    another name, a value escaping would change, one that holds a placeholder, or too many interfaces)."""
    if spec.source.get("name") != spec.name or not NAME_RE.fullmatch(spec.name) or len(spec.networks) > len(MAC_PLACEHOLDERS):
        return None
    identity = {PLACEHOLDER: spec.name}
    if spec.uuid is not None:
        identity[UUID_PLACEHOLDER] = spec.uuid
    for i, net in enumerate(spec.networks):
        if net.mac is not None:
            identity[MAC_PLACEHOLDERS[i]] = net.mac
    values = list(identity.values())
    if any(not _IDENTITY_RE.fullmatch(v) for v in values[1:]) or any(p in v for p in identity for v in values):
        return None
    return identity


def _shape(spec: VmSpec) -> VmSpec:
    """The spec with the placeholders for its name, UUID and MAC addresses."""
    networks = tuple(dataclasses.replace(net, mac=MAC_PLACEHOLDERS[i]) if net.mac is not None else net
                     for i, net in enumerate(spec.networks))
    return dataclasses.replace(spec, name=PLACEHOLDER, source={**spec.source, "name": PLACEHOLDER},
                               uuid=UUID_PLACEHOLDER if spec.uuid is not None else None, networks=networks)


def holds_identity_placeholder(value: Any) -> bool:
    """Whether a placeholder (name, UUID or MAC) occurs in any string of `value` (nested dicts, lists, tuples)."""
    if isinstance(value, str):
        low = value.lower()  # the placeholders are lower case; a projection may have changed a value's case
        return PLACEHOLDER in low or UUID_PLACEHOLDER in low or _MAC_PREFIX in low
    if isinstance(value, dict):
        return any(holds_identity_placeholder(k) or holds_identity_placeholder(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(holds_identity_placeholder(item) for item in value)
    return False


def _digest(spec_text: str) -> str:
    return hashlib.sha256(spec_text.encode()).hexdigest()
