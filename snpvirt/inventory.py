"""What `list` and `status` show of a managed domain: the values of the definition that runs, and those
of the persistent definition that waits for a restart."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from lxml import etree

from snpvirt import domxml, drift, metadata
from snpvirt import policy as snp_policy
from snpvirt.errors import BadInputError
from snpvirt.models import DomainRecord


def row(record: DomainRecord, root: etree._Element, info: metadata.ManagedInfo | None) -> dict[str, Any]:
    """What runs and what is pending. An active domain runs its live definition, which differs from the
    persistent one after an update (or an import) until it restarts: show the live values, and the
    persistent ones that differ under `pending`. `info` is None for a domain snpvirt does not manage."""
    persistent = summary(record, root, info)
    if record.live_xml is None or _same_document(record.live_xml, record.xml):
        return {**persistent, "restart_required": False, "pending": {}}
    live = domxml.parse(record.live_xml)
    running = summary(record, live, metadata.read(live))
    changes = drift.differences(drift.project(root), drift.project(live))
    pending = {key: value for key, value in persistent.items() if running[key] != value} if changes else {}
    return {**running, "restart_required": bool(changes), "pending": pending}


def _same_document(live_xml: str, persistent_xml: str) -> bool:
    """The cheap path: a live definition that is the persistent one plus the running id (the test
    driver's only difference) runs as defined. Anything else is compared part by part."""
    head, sep, rest = live_xml.partition(">")
    return re.sub(r" id='\d+'$", "", head) + sep + rest == persistent_xml


def summary(record: DomainRecord, root: etree._Element, info: metadata.ManagedInfo | None) -> dict[str, Any]:
    """One definition's values as `list` shows them. The expected measurement only while the launch inputs
    it was computed for (recorded in snpvirt's metadata) are still the definition's own."""
    ls = root.find("launchSecurity")
    snp = ls if ls is not None and ls.get("type") == "sev-snp" else None
    policy = _policy_of(snp)
    memory_kib = drift.kib(root.find("memory"))
    recorded = info.launch if info is not None else {}
    measurement = recorded.get("measurement") if isinstance(recorded.get("measurement"), dict) else {}
    stale = _inputs_changed_since_measured(root, policy, recorded)
    return {
        "name": record.name,
        "uuid": record.uuid,
        "state": record.state,
        "vcpus": int(root.findtext("vcpu") or 0),
        "memory_mib": memory_kib // 1024 if memory_kib is not None else None,
        "launch_security": ls.get("type") if ls is not None else None,
        "policy": snp_policy.to_hex(policy) if policy is not None else None,
        "policy_flags": snp_policy.set_flag_names(policy) if policy is not None else [],
        "kernel_hashes": snp is not None and snp.get("kernelHashes") == "yes",
        "expected_measurement": None if stale else measurement.get("value"),
        "measurement_stale": stale,
    }


def _policy_of(snp: etree._Element | None) -> int | None:
    if snp is None:
        return None
    text = snp.findtext("policy")
    if text is None:
        return snp_policy.DEFAULT_POLICY
    try:
        return snp_policy.parse_hex(text)
    except BadInputError:
        return None  # not hex: the SNP rules refuse to start it; list shows no policy


def _inputs_changed_since_measured(root: etree._Element, policy: int | None, recorded: dict[str, Any]) -> list[str]:
    """The launch inputs snpvirt recorded with the measurement that the definition no longer has (another
    tool redefined it): a measurement computed for 4 vCPUs says nothing about a launch with 2."""
    if not recorded:
        return []

    def path(kind: str) -> str | None:
        return recorded[kind].get("path") if isinstance(recorded.get(kind), dict) else None

    vcpus = recorded.get("vcpus") if isinstance(recorded.get("vcpus"), dict) else {}
    recorded_policy = recorded.get("policy")
    have_want = {
        "vcpus": (root.findtext("vcpu", "").strip(), vcpus.get("count")),
        "policy": (snp_policy.to_hex(policy) if policy is not None else None,
                   # Text as snpvirt writes it; anything else (attributes added by an edit) cannot match.
                   _hex_or_text(recorded_policy) if isinstance(recorded_policy, str) else recorded_policy),
        "firmware": (root.findtext("os/loader", "").strip() or None, path("firmware")),
        "kernel": (root.findtext("os/kernel"), path("kernel")),
        "initrd": (root.findtext("os/initrd"), path("initrd")),
        "cmdline": (root.findtext("os/cmdline"), recorded.get("cmdline")),
    }
    return [what for what, (have, want) in have_want.items() if have != want]


def _hex_or_text(text: str) -> str:
    try:
        return snp_policy.to_hex(snp_policy.parse_hex(text))
    except BadInputError:
        return text


def readable_launch(launch: dict[str, Any]) -> dict[str, Any]:
    """The recorded launch inputs as `status` shows them: the ID key digests in hex, as attestation reports
    and `attest show` print them (the metadata keeps the base64 it has always held, so older domains read alike)."""
    id_block = launch.get("id_block")
    if not isinstance(id_block, dict):
        return launch
    return {**launch, "id_block": {key: _hex_of_base64(value) if key.endswith("_digest") else value
                                   for key, value in id_block.items()}}


def _hex_of_base64(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value  # not base64 (edited by hand?): shown as recorded
