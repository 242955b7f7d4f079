"""Defining a document: define it and check libvirt's copy (rolled back when it lost an SEV-SNP setting);
`define` of an XML file, and `import` of a hand-written or virt-manager domain."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from lxml import etree

from snpvirt.domain import drift, importer, metadata
from snpvirt.domain import xml as domxml
from snpvirt.domain.sevparams import SevParams
from snpvirt.errors import BadInputError, ConflictError, SnpvirtError
from snpvirt.host.firmware import InstalledFirmware
from snpvirt.models import DomainRecord, Finding
from snpvirt.orchestration.base import DefinedMeanwhile, Hypervisor, Outcome, drift_text


class Defining:
    """Part of Manager: define a document and check libvirt's copy; define_xml, import_domain."""

    hv: Hypervisor
    allow_debug: bool
    clock: Callable[[], str]
    warnings: list[Finding]

    def _define_checked(self, xml: str, previous: DomainRecord | None,
                        asked_snp: dict[str, Any] | None = None) -> DomainRecord:
        """Define, then check libvirt's own view of it: every SNP setting it was given kept, so every SNP rule
        holds. A failed check rolls back: an update puts the previous definition back (never an undefine,
        which would delete the user's domain); a new domain is removed. `asked_snp`: the SNP projection of
        `xml` when the caller has it already (render parsed the document)."""
        if asked_snp is None:
            asked_snp = drift.project(domxml.parse(xml), snp_only=True)
        try:
            record = self.hv.define(xml)
        except SnpvirtError:
            name = domxml.parse(xml).findtext("name")
            if previous is None and self.hv.lookup(name) is not None:
                raise DefinedMeanwhile(f"domain {name} was defined by another client at the same time",
                                        "run the command again: it will see that domain") from None
            raise
        problem = self._not_kept(asked_snp, record.xml)
        if problem is not None:
            if previous is None:
                self.hv.undefine(record.name)
            else:
                self.hv.define(previous.xml)
            message, hint = problem
            raise SnpvirtError(f"libvirt's definition of {record.name} {message}; the change was rolled back", hint)
        return record

    @staticmethod
    def _not_kept(asked_snp: dict[str, Any], stored_xml: str) -> tuple[str, str] | None:
        """(message, hint) when libvirt's stored definition lost or changed an SEV-SNP setting it was given.

        Every document defined here passed every SNP rule first (render, define_xml and import check it),
        and every rule reads only parts that the SNP projection holds (domain type, machine, firmware,
        NVRAM, SMM, kernel, launch security with all its attributes and children). So equal projections
        mean the stored definition passes the rules too, without running them (or the schema) again."""
        try:
            stored = domxml.parse(stored_xml)
        except etree.XMLSyntaxError as exc:
            return f"is not well-formed XML ({exc})", "see the libvirt log of this host"
        lost = drift.differences(asked_snp, drift.project(stored, snp_only=True))
        if lost:
            return (f"does not keep what it was given ({drift_text(lost)})",
                    "this libvirt does not keep these SEV-SNP settings: use libvirt >= 10.5 on this host")
        return None

    # --- define an XML document ------------------------------------------------------------------

    def define_xml(self, xml: bytes, label: str, check: bool = False) -> Outcome:
        errors = [f for f in domxml.check(xml, self.allow_debug) if f.severity == "error"]
        if errors:
            raise BadInputError(f"{label}: {errors[0].rule_id}: {errors[0].message}"
                                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), errors[0].hint)
        root = domxml.parse(xml)
        digest = metadata.content_digest(root)
        if metadata.read(root) is None:
            metadata.add_import_record(root, xml, self.clock())
        metadata.find(root).set("xml_digest", digest)
        return self._define_document(root, "define", digest, check)

    def _define_document(self, root: etree._Element, action: str, digest: str, check: bool) -> Outcome:
        name = root.findtext("name")
        existing = self.hv.lookup(name)
        if existing is not None:
            existing_root = domxml.parse(existing.xml)
            info = metadata.read(existing_root)
            uuid = root.findtext("uuid")
            if info is None or (uuid and uuid != existing.uuid):
                raise ConflictError(f"a domain named {name} already exists" + (" and is not managed by snpvirt" if info is None
                                    else f" with UUID {existing.uuid}"), f"bring it under management with: snpvirt import {name}")
            # The same document again, and libvirt still holds what it said (no other tool redefined it).
            if info.xml_digest == digest and not drift.differences(drift.project(root), drift.project(existing_root)):
                return Outcome(name, "unchanged", state=existing.state)
            if not uuid:
                etree.SubElement(root, "uuid").text = existing.uuid
        self.ensure_ready()
        if check:  # the same conflicts and the same gate as the run, then stop short of libvirt
            return Outcome(name, action if existing is None else "update", changed=True,
                           state=existing.state if existing else "absent", details={"planned": True})
        self._define_checked(etree.tostring(root, encoding="unicode"), existing)
        return Outcome(name, action if existing is None else "update", changed=True,
                       state=existing.state if existing else "shutoff")

    # --- import ----------------------------------------------------------------------------------

    def import_domain(self, xml: bytes, from_domain: DomainRecord | None, fix: bool, check: bool,
                      sev: SevParams | None, firmware: str | None,
                      installed: InstalledFirmware = InstalledFirmware()) -> Outcome:
        """`installed`: what the host's descriptors and files say about firmware (nothing known by default:
        a domain's firmware path must then be an AmdSev build by name, or given as --firmware)."""
        if firmware is not None:
            self.warnings += installed.check_option(firmware)
        try:
            root = domxml.parse(xml)
        except etree.XMLSyntaxError as exc:  # a file that is not XML at all: bad input, like validate says
            raise BadInputError(f"not well-formed XML: {exc}", "fix the XML syntax at that line") from None
        name = root.findtext("name") or "(unnamed)"
        if from_domain is not None and metadata.read(root) is not None:
            return Outcome(name, "unchanged", state=from_domain.state, details={
                "managed": True, "restart_required": self._restart_required(from_domain, root)})
        before = domxml.check(xml, self.allow_debug)
        changes = importer.fix(root, sev, firmware) if fix else []
        fixed = etree.tostring(root, encoding="unicode") + ("\n" if xml.endswith(b"\n") else "")
        after = domxml.check(fixed, self.allow_debug)
        # Both sides parsed and serialised alike: the diff shows the changes, not libvirt's quotes or spacing.
        original = etree.tostring(domxml.parse(xml), encoding="unicode") + ("\n" if xml.endswith(b"\n") else "")
        diff = "".join(difflib.unified_diff(original.splitlines(True), fixed.splitlines(True), "original", "fixed"))
        out = Outcome(name, "import", state=from_domain.state if from_domain else None, details={
            "broken_rules": [f.as_dict() for f in before if f.severity == "error"], "changes": changes,
            "remaining": [f.as_dict() for f in after], "xml_diff": diff})
        errors = [f for f in after if f.severity == "error"]
        if errors:
            hint = "run again with --fix" if not fix and changes == [] else errors[0].hint
            return out.fail(BadInputError(f"{name} breaks {len(errors)} SEV-SNP rule(s): {', '.join(f.rule_id for f in errors)}", hint))
        refused = _firmware_refused(name, root, installed, fix, firmware)
        if refused is not None:
            return out.fail(refused)
        if from_domain is not None:  # a running domain keeps running as it was until it restarts
            out.details["restart_required"] = self._restart_required(from_domain, root)
        metadata.add_import_record(root, xml, self.clock())
        digest = metadata.read(root).digest
        if from_domain is None:
            existing = self.hv.lookup(name)
            if existing is not None:
                info = metadata.read(domxml.parse(existing.xml))
                if info is not None and info.digest == digest:
                    out.action, out.state = "unchanged", existing.state
                    return out
                return out.fail(ConflictError(f"a domain named {name} already exists", f"import it by name: snpvirt import {name}"))
        self.ensure_ready()
        if check:  # after the same conflict checks and gate as the run: the plan promises only what it would do
            out.changed = True
            out.details["planned"] = True
            return out
        self._define_checked(etree.tostring(root, encoding="unicode"), from_domain)
        out.changed, out.state = True, from_domain.state if from_domain else "shutoff"
        return out


def _firmware_refused(name: str, root: etree._Element, installed: InstalledFirmware, fix: bool,
                      firmware: str | None) -> BadInputError | None:
    """A domain whose firmware is not an SEV-SNP build would be defined and then never launch (or launch
    unmeasurable): refuse it unless descriptors or its name say it is one, or --firmware named it."""
    loader = (root.findtext("os/loader") or "").strip()
    if not loader or (fix and loader == firmware):
        return None  # no path: libvirt picks a firmware whose descriptor offers amd-sev-snp
    verdict = installed.verdict(loader)
    if verdict.snp:
        return None
    what = "is not an SEV-SNP build" if verdict.snp is False else "is not known here as an SEV-SNP build"
    return BadInputError(f"firmware {loader} {what} ({verdict.reason}); {name} was not imported",
                         ("pass" if fix else "run again with --fix and") +
                         f" --firmware PATH of an SEV-SNP build, e.g. --firmware {installed.example()}")

