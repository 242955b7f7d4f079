"""A domain's launch record: what it launches with, checked against the inputs a measurement was
computed from, and what an attestation report from it must show. Pure functions over the domain
document and snpvirt's metadata; the manager reads and writes libvirt around them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable

from lxml import etree

from snpvirt import policy as snp_policy
from snpvirt.domain import metadata
from snpvirt.errors import BadInputError, ConflictError
from snpvirt.launch import inputs as launch
from snpvirt.models import VmSpec


@dataclass(frozen=True)
class LaunchInputs:
    """What a measurement was computed from, as far as the domain's definition must agree with it."""

    vcpus: int
    cpu_model: str | None
    cmdline: str | None
    kernel_hashes: bool
    source: str = "spec"  # how a mismatch names them: "spec", or "given" (measure's --vcpus, --kernel, ...)

    @classmethod
    def of_spec(cls, spec: VmSpec) -> LaunchInputs:
        return cls(spec.vcpus, spec.cpu_model, spec.boot.cmdline, spec.snp.kernel_hashes)


def _recorded_inputs(root: etree._Element, info: metadata.ManagedInfo) -> dict[str, Any]:
    """What a domain defined from a spec launches with: the spec's inputs, as snpvirt recorded them."""
    vcpus = info.launch.get("vcpus") if isinstance(info.launch.get("vcpus"), dict) else {}
    return {"vcpus": vcpus.get("count"), "cpu_model": vcpus.get("model"), "cmdline": info.launch.get("cmdline"),
            "kernel_hashes": _kernel_hashes(root)}


def _definition_inputs(root: etree._Element) -> dict[str, Any]:
    """What an imported domain launches with: its definition."""
    cpu = root.find("cpu")
    mode = cpu.get("mode", "custom") if cpu is not None else None
    cpu_model = ((cpu.findtext("model") or "").strip() or None) if mode == "custom" else mode  # host-passthrough, ...
    return {"vcpus": (root.findtext("vcpu") or "").strip() or None, "cpu_model": cpu_model,
            "cmdline": root.findtext("os/cmdline"), "kernel_hashes": _kernel_hashes(root)}


def _kernel_hashes(root: etree._Element) -> bool:
    ls = root.find("launchSecurity")
    return ls is not None and ls.get("kernelHashes") == "yes"


def launch_record(root: etree._Element, expected: launch.Expected) -> dict[str, Any]:
    """An imported domain's launch inputs as snpvirt records them for a spec's domain: paths from its
    definition, digests of the files the measurement was computed from."""
    def launch_file(kind: str, path: str | None) -> dict[str, Any] | None:
        measured = expected.digests.get(kind)
        if not path and measured is None:
            return None
        return {"path": path or None, "sha256": measured.sha256 if measured is not None else None}

    inputs = _definition_inputs(root)
    policy = root.findtext("launchSecurity/policy")
    try:
        policy = snp_policy.to_hex(snp_policy.parse_hex(policy) if policy else snp_policy.DEFAULT_POLICY)
    except BadInputError:
        pass  # recorded as written: the SNP rules refuse a policy that is not hex
    return {"firmware": launch_file("firmware", (root.findtext("os/loader") or "").strip()),
            "kernel": launch_file("kernel", root.findtext("os/kernel")),
            "initrd": launch_file("initrd", root.findtext("os/initrd")),
            "cmdline": inputs["cmdline"], "vcpus": {"count": inputs["vcpus"], "model": inputs["cpu_model"]},
            "policy": policy}


def _recorded_digests(info: metadata.ManagedInfo, expected: launch.Expected) -> list[tuple[str, str, str]]:
    """(what, recorded, measured) for each launch file whose digest snpvirt recorded and that was measured."""
    pairs = []
    for kind in ("firmware", "kernel", "initrd"):
        recorded = info.launch.get(kind) if isinstance(info.launch.get(kind), dict) else {}
        measured = expected.digests.get(kind)
        if recorded.get("sha256") not in (None, "unknown") and measured is not None and measured.sha256:
            pairs.append((f"{kind} sha256", recorded["sha256"], measured.sha256))
    return pairs


def mismatches(root: etree._Element, info: metadata.ManagedInfo, inputs: LaunchInputs,
               expected: launch.Expected) -> list[str]:
    """How `inputs` differ from what the domain launches with: a spec's domain as snpvirt recorded its spec
    (and the digests of the files it read then), an imported domain as its definition says."""
    imported = info.origin == "import"
    launched = _definition_inputs(root) if imported else _recorded_inputs(root, info)
    return [f"{what}: domain {have!r}, {inputs.source} {want!r}" for what, have, want in (
        ("vCPUs", launched["vcpus"], str(inputs.vcpus)), ("vCPU model", launched["cpu_model"], inputs.cpu_model),
        ("cmdline", launched["cmdline"], inputs.cmdline), ("kernel hashes", launched["kernel_hashes"], inputs.kernel_hashes),
        *([] if imported else _recorded_digests(info, expected))) if have != want]


def attestation_expectations(name: str, root: etree._Element, info: metadata.ManagedInfo) -> dict[str, Any]:
    """What a report from domain `name` (its definition `root`, snpvirt's record `info`) must show: the
    recorded measurement, policy and host data, and the key digests its <idAuth> launches with."""
    def decoded(what: str, decode: Callable[[str], Any], text: str | None) -> Any:
        """A value the definition records; another tool may have edited it into anything."""
        try:
            if text and not isinstance(text, str):  # an element that gained attributes reads as a dict
                raise ValueError(what)
            return decode(text) if text else None
        except (ValueError, BadInputError):  # binascii.Error is a ValueError
            raise ConflictError(f"domain {name}'s recorded {what} is not readable (edited by another tool?)",
                                "restore it: snpvirt apply SPEC") from None

    recorded = info.launch.get("measurement") if isinstance(info.launch.get("measurement"), dict) else {}
    value = recorded.get("value")
    host_data = root.findtext("launchSecurity/hostData")
    policy_text = info.launch.get("policy") or root.findtext("launchSecurity/policy")
    id_block = info.launch.get("id_block") if isinstance(info.launch.get("id_block"), dict) else {}
    digest = lambda key: decoded(key.replace("_", " "), base64.b64decode, id_block.get(key))  # noqa: E731
    id_key_digest, author_key_digest = digest("id_key_digest"), digest("author_key_digest")
    id_auth = root.findtext("launchSecurity/idAuth")
    if id_auth:
        # What launches is the <idAuth> libvirt holds, signed by snpvirt (snp.id_key) or brought
        # ready-made (snp.id_block/id_auth): the report's key digests follow from it either way.
        from snpvirt.launch import idblock  # cryptography: imported only for a domain with signed ID blocks

        try:
            from_auth = idblock.launched_key_digests(id_auth, root.find("launchSecurity").get("authorKey") == "yes")
        except BadInputError as exc:
            raise ConflictError(f"domain {name}'s <idAuth>: {exc.message}", "restore it: snpvirt apply SPEC") from None
        if id_key_digest is not None and id_key_digest != from_auth[0]:
            raise ConflictError(f"domain {name}'s <idAuth> carries another ID key than the one snpvirt signed "
                                "its ID block with (edited by another tool?)", "restore it: snpvirt apply SPEC")
        id_key_digest, author_key_digest = from_auth
    return {
        "id_key_digest": id_key_digest,
        "author_key_digest": author_key_digest,
        "measurement": decoded("measurement", bytes.fromhex, value),
        "measurement_unknown": f"domain {name} records no measurement ({recorded.get('reason', 'none recorded')}); "
                               f"record one with: snpvirt measure SPEC --record {name} (or, for an imported "
                               f"domain, with its launch files: snpvirt measure --firmware FILE --vcpus N "
                               f"--vcpu-type TYPE ... --record {name})",
        "policy": decoded("policy", snp_policy.parse_hex, policy_text),
        "host_data": decoded("host data", lambda text: base64.b64decode(text.strip()), host_data),
    }
