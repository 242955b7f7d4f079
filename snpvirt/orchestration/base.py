"""What every part of the manager shares: the hypervisor it works on, what an item's result looks like,
and the checks on a definition that several verbs make."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from lxml import etree

from snpvirt.domain import rules as snp_rules
from snpvirt.domain import xml as domxml
from snpvirt.errors import ConflictError, SnpvirtError
from snpvirt.models import DomainRecord, Finding, VmSpec

ACTIVE_STATES = {"running", "blocked", "paused", "shutdown", "pmsuspended"}


# Here, not in define.py which raises it, because apply.py catches it: scripts/mutation re-imports the
# module it mutates, and a class re-created there would no longer be the one the other module catches.
class DefinedMeanwhile(ConflictError):
    """A create lost a race: another client defined the same name between our look-up and our define."""


class Hypervisor(Protocol):
    uri: str | None
    simulated: bool

    def domain_names(self) -> set[str]: ...
    def domains(self) -> Iterable[DomainRecord]: ...
    def lookup(self, name: str) -> DomainRecord | None: ...
    def define(self, xml: str) -> DomainRecord: ...
    def state(self, name: str) -> str: ...
    def live_xml(self, name: str) -> str | None: ...
    def start(self, name: str) -> None: ...
    def start_definition(self, name: str, xml: str) -> None: ...
    def persistent_domains(self) -> dict[str, str]: ...
    def shutdown(self, name: str) -> None: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def autostart(self, name: str) -> bool: ...
    def set_autostart(self, name: str, on: bool) -> None: ...
    def set_metadata(self, name: str, element_xml: str, namespace: str) -> None: ...


@dataclass
class Outcome:
    """The result of one item (spec, domain): what was done, and the error if it failed."""

    name: str
    action: str
    ok: bool = True
    changed: bool = False
    state: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: SnpvirtError | None = None
    created_uuid: str | None = None  # the UUID of the domain apply defined anew for it (its end-of-run look); not shown

    def fail(self, error: SnpvirtError) -> Outcome:
        self.ok, self.error = False, error
        return self

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "ok": self.ok, "changed": self.changed, "action": self.action, "state": self.state,
               **self.details}
        if self.error is not None:
            out["error"] = {"kind": self.error.kind, "message": self.error.message, "hint": self.error.hint}
        return out


@dataclass
class SpecInput:
    """A spec as given on the command line: parsed, or the error that parsing raised."""

    label: str
    spec: VmSpec | None = None
    error: SnpvirtError | None = None


def snp_errors(definition: str | etree._Element, allow_debug: bool) -> list[Finding]:
    """The SNP rules a definition breaks, decided on the parsed document with every rule. Never on its
    text: a comment or another tool's <metadata> child can contain anything, libvirt keeps both."""
    try:
        root = domxml.parse(definition) if isinstance(definition, str) else definition
    except etree.XMLSyntaxError as exc:
        return [Finding("xml.well_formed", "error", f"the definition is not well-formed XML ({exc})",
                        "redefine it from its spec: snpvirt apply SPEC")]
    return [f for f in snp_rules.check_rules(root, allow_debug) if f.severity == "error"]


def drift_text(changes: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"{c['key']}: {c['from']!r}, snpvirt defined {c['to']!r}" for c in changes[:3])
    return shown + (f" (and {len(changes) - 3} more)" if len(changes) > 3 else "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def is_active(state: str | None) -> bool:
    return state in ACTIVE_STATES

