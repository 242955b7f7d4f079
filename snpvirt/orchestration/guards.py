"""What a change or a start must pass: the host's readiness is checked by Manager.ensure_ready; here, that
a domain is snpvirt's, and that a definition still launches as the SEV-SNP guest snpvirt defined."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from lxml import etree

from snpvirt.domain import drift, metadata, render
from snpvirt.domain import spec as specs
from snpvirt.domain import xml as domxml
from snpvirt.domain.copies import CopyRenderer
from snpvirt.domain.sevparams import SevParams
from snpvirt.errors import BadInputError, ConflictError, NotFoundError, SnpvirtError
from snpvirt.launch import inputs as launch
from snpvirt.models import DomainRecord, VmSpec
from snpvirt.orchestration.base import Hypervisor, drift_text, is_active, snp_errors

# The parts of <launchSecurity> that snpvirt signs at define (snp.id_key): made from the launch files, which
# are not always readable where a domain is compared (at start, they need not be).
_SIGNED_BLOCKS = {"launch_security.idBlock": "an ID block", "launch_security.idAuth": "an ID authentication block"}


class Guards:
    """Part of Manager: that a domain is snpvirt's, and that a definition still launches as the SEV-SNP guest snpvirt defined."""

    hv: Hypervisor
    allow_debug: bool
    _compared_copies: CopyRenderer

    def _managed(self, name: str) -> tuple[DomainRecord, metadata.ManagedInfo]:
        record = self.hv.lookup(name)
        if record is None:
            raise NotFoundError(f"no domain named {name} on {self.hv.uri or 'the default URI'}", "list them with: snpvirt list --all")
        info = metadata.read(domxml.parse(record.xml))
        if info is None:
            raise ConflictError(f"domain {name} is not managed by snpvirt", f"bring it under management first: snpvirt import {name}")
        return record, info

    def _refuse_to_start(self, record: DomainRecord) -> None:
        """Never start a definition that would not launch as the SEV-SNP guest snpvirt defined: it must pass
        every SNP rule, and its SNP settings must still be the recorded spec's (it may have been edited since)."""
        root = domxml.parse(record.xml)
        errors = snp_errors(root, self.allow_debug)
        if errors:
            raise ConflictError(f"{record.name}'s definition breaks {errors[0].rule_id} ({errors[0].message}); "
                                "snpvirt does not start it",
                                f"restore it: snpvirt apply SPEC, or snpvirt import {record.name} --fix"
                                + (", or pass --allow-debug for a throw-away test guest"
                                   if errors[0].rule_id == "snp.policy_debug" else ""))
        drifted = self._drift_from_recorded_spec(root)
        if drifted:
            raise ConflictError(f"{record.name}'s SEV-SNP settings were changed outside snpvirt ({drift_text(drifted)}); "
                                "snpvirt does not start it",
                                f"restore them from the spec: snpvirt apply SPEC (snpvirt status {record.name} shows it)")

    def _drift_from_recorded_spec(self, root: etree._Element) -> list[dict[str, Any]]:
        """The SNP settings in which a definition differs from what its recorded spec renders. Only for domains
        defined from a spec: an imported or hand-written document has no spec to compare with."""
        info = metadata.read(root)
        if info is None or info.origin != "spec" or info.xml_digest is not None or info.spec is None:
            return []
        try:
            spec = specs.parse_spec(info.spec, allow_debug=True)  # the debug bit is the rules' to judge
        except SnpvirtError as err:
            return [{"key": "(recorded spec)", "from": err.message, "to": "a spec snpvirt can read"}]
        defined = drift.project(root)
        desired = self._desired_projection(spec, root, defined, launch_record=None)
        return [c for c in drift.differences(desired, defined) if drift.is_snp_setting(c["key"])]

    def _desired_projection(self, spec: VmSpec, existing: etree._Element, defined: dict[str, Any],
                            launch_record: launch.LaunchRecord | None) -> dict[str, Any]:
        """What the spec renders, in the canonical projection. cbitpos/reducedPhysBits that the spec leaves to
        the host are the host's to fill in: left out of the comparison, so nothing asks the host here (taking
        them from the existing definition would only compare that definition with itself). Signed ID blocks
        need the launch record; without it `existing`'s stand in if they are the blocks snpvirt signed and
        recorded (_signed_as_recorded). Boot volumes are compared at the host paths recorded at define.
        `defined`: the projection of `existing`, which the caller compares with and so has already."""
        cbitpos, reduced = spec.snp.cbitpos, spec.snp.reduced_phys_bits
        sev = SevParams(cbitpos if cbitpos is not None else 0, reduced if reduced is not None else 0, "comparison")
        spec = _with_defined_boot_paths(spec, existing)
        # A fleet's copies of one spec: rendered once for the comparison too (its own memory: apply's renders
        # for define, with stamps, come between the comparisons of an update).
        xml = self._compared_copies.render(spec, (sev, launch_record), lambda s: render.render_xml(s, sev, None, launch_record))
        projection = drift.project(domxml.parse(xml))
        if spec.snp.id_key and launch_record is None:
            # The definition's own blocks stand in when they are those snpvirt signed (a key missing here would
            # be compared as a block to remove, refusing every start of such a domain). Blocks removed since,
            # or swapped for others (another key, another measurement: an older kernel's), are a change.
            own = defined if _signed_as_recorded(spec, metadata.read(existing), defined) else {}
            projection.update({key: own.get(key) or f"({what} signed with the spec's id_key)"
                               for key, what in _SIGNED_BLOCKS.items()})
        left_out = {"launch_security.cbitpos": cbitpos is None, "launch_security.reducedPhysBits": reduced is None}
        return {key: value for key, value in projection.items() if not left_out.get(key)}

    def _restart_required(self, record: DomainRecord, persistent: etree._Element) -> bool:
        """An active domain whose live definition differs from `persistent`: it runs the old one."""
        return is_active(record.state) and self._runs_otherwise(record, drift.project(persistent))

    @staticmethod
    def _runs_otherwise(record: DomainRecord, desired: dict[str, Any]) -> bool:
        """Whether an active domain's live definition differs from `desired` (restart required)."""
        if record.live_xml is None:
            return False
        return bool(drift.differences(desired, drift.project(domxml.parse(record.live_xml))))


def _with_defined_boot_paths(spec: VmSpec, existing: etree._Element) -> VmSpec:
    """A recorded spec's boot volumes are the host paths snpvirt recorded with the launch inputs at define (the
    host resolved them then), not the paths the definition holds now: another tool may have changed those."""
    unresolved = spec.boot.unresolved
    if not unresolved:
        return spec
    recorded = metadata.read(existing).launch  # volumes are left unresolved only in a spec snpvirt recorded
    # An element another tool left without attributes reads as its text (or None): then no path is recorded.
    paths = {kind: (recorded.get(kind) if isinstance(recorded.get(kind), dict) else {}).get("path")
             or f"(volume {kind}: no path recorded)" for kind in unresolved}
    return dataclasses.replace(spec, boot=dataclasses.replace(spec.boot, **paths))


def _signed_as_recorded(spec: VmSpec, info: metadata.ManagedInfo | None, defined: dict[str, Any]) -> bool:
    """Whether the definition's <idBlock>/<idAuth> (in its projection `defined`, read as they are compared) are
    the blocks snpvirt signed at define and recorded in `info`, as far as that can be told without the launch
    files: the ID block rebuilt byte for byte from the spec and the recorded measurement, an <idAuth> carrying
    the recorded ID (and author) key. The signature is the firmware's to check at launch; this checks what was
    signed, and with which key."""
    from snpvirt.launch import idblock  # cryptography: imported only for a domain with signed ID blocks

    measured, signed = (info.launch.get(tag) if info is not None else None for tag in ("measurement", "id_block"))
    block_text, auth_text = defined.get("launch_security.idBlock"), defined.get("launch_security.idAuth")
    if not (isinstance(measured, dict) and isinstance(signed, dict) and isinstance(block_text, str)
            and isinstance(auth_text, str)):
        return False
    snp = spec.snp
    try:
        block = idblock.id_block(bytes.fromhex(measured.get("value") or ""), snp.policy,
                                 bytes.fromhex(snp.family_id) if snp.family_id else bytes(16),
                                 bytes.fromhex(snp.image_id) if snp.image_id else bytes(16), snp.guest_svn)
        # drift shows a 4096-byte idAuth as "keys:" and its base64 with the signatures zeroed: the keys are there
        id_key, author_key = idblock.launched_key_digests(auth_text.removeprefix("keys:"),
                                                          defined.get("launch_security.@authorKey") == "yes")
        keys = [base64.b64decode(signed.get(name) or "", validate=True) for name in ("id_key_digest", "author_key_digest")]
        return (base64.b64decode(block_text, validate=True) == block and id_key == keys[0]
                and (not signed.get("author_key_digest") or author_key == keys[1]))
    except (ValueError, BadInputError):  # edited into anything: not what snpvirt signed
        return False
