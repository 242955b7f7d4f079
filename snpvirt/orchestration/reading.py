"""The read side: what `list` and `status` show, and the measurement recorded later (when the launch
files were not readable where the domain was defined) with what attestation expects of a domain."""

from __future__ import annotations

from typing import Any

from lxml import etree

from snpvirt.domain import inventory, launchrecord, metadata
from snpvirt.domain import xml as domxml
from snpvirt.errors import ConflictError
from snpvirt.launch import inputs as launch
from snpvirt.orchestration.base import Hypervisor, Outcome, is_active


class Reading:
    """Part of Manager: list, inventory, status; record_measurement, attestation_expectations."""

    hv: Hypervisor

    # --- measurement recorded later (files were not readable where the domain was defined) ----------

    def record_measurement(self, name: str, inputs: launchrecord.LaunchInputs, expected: launch.Expected) -> Outcome:
        """Record `expected` in the domain only if it was computed from what the domain launches with:
        otherwise it is a value this domain can never produce (attestation would fail, or pass for another guest).

        A domain defined from a spec launches with that spec's inputs, as snpvirt recorded them (with the
        digests of the files it could read then). An imported domain launches with its definition: its
        inputs are recorded from it, with the measurement, so that `list` can tell when they change."""
        record, info = self._managed(name)
        root = domxml.parse(record.xml)
        imported = info.origin == "import"
        mismatches = launchrecord.mismatches(root, info, inputs, expected)
        if mismatches:
            spec = inputs.source == "spec"
            whose = "this spec's" if spec else "the given"
            raise ConflictError(f"{name} was not launched with {whose} inputs ({'; '.join(mismatches)})",
                                "measure with the spec the domain was defined from (snpvirt status NAME shows it)" if spec
                                else f"give what {name} launches with (snpvirt status {name}; virsh dumpxml {name})")
        element = metadata.find(root)
        if imported:
            element = metadata.with_launch_inputs(element, launchrecord.launch_record(root, expected))
        element = metadata.with_measurement(element, expected)
        if etree.tostring(element) == etree.tostring(metadata.find(root)):
            return Outcome(name, "record", state=record.state)
        self.hv.set_metadata(name, metadata.without_namespace(element), domxml.METADATA_NS)
        return Outcome(name, "record", changed=True, state=record.state)

    def attestation_expectations(self, name: str) -> dict[str, Any]:
        """What a report from this domain must show: its recorded measurement, policy and host data."""
        record, info = self._managed(name)
        return launchrecord.attestation_expectations(name, domxml.parse(record.xml), info)

    # --- inventory -------------------------------------------------------------------------------

    def list(self, include_inactive: bool = False) -> list[dict[str, Any]]:
        return self.inventory(include_inactive)[0]

    def inventory(self, include_inactive: bool = False, include_unmanaged: bool = False) -> tuple[list[dict[str, Any]], int]:
        """The rows `list` shows, each saying whether snpvirt manages it, and how many domains snpvirt does not
        manage were left out (so `list` can say so rather than look like the host's whole inventory)."""
        rows, hidden = [], 0
        for record in self.hv.domains():
            if not include_inactive and not is_active(record.state):
                continue
            root = domxml.parse(record.xml)
            info = metadata.read(root)
            if info is None and not include_unmanaged:
                hidden += 1
                continue
            rows.append({**inventory.row(record, root, info), "managed": info is not None})
        return sorted(rows, key=lambda r: r["name"]), hidden

    def status(self, name: str) -> dict[str, Any]:
        record, info = self._managed(name)
        root = domxml.parse(record.xml)
        return {**inventory.row(record, root, info), "origin": info.origin, "snpvirt_version": info.version,
                "spec_digest": info.digest, "spec": info.spec, "launch": metadata.typed_launch(info.launch),
                "defined_at": info.defined_at, "updated_at": info.updated_at}

