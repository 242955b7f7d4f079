"""apply's pipeline on libvirt's test driver: specs are rendered on the calling thread while worker threads
check each rendered document, pass the readiness gate and carry the plan out. What must hold whatever the
threads do: no document reaches libvirt unchecked, the gate is asked once and its refusal changes nothing,
and results come back in the order the specs were given."""

from __future__ import annotations

import threading

import pytest

from snpvirt.host import readiness
from snpvirt.domain import sevparams
from snpvirt.domain import spec as specs
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import HostNotReadyError
from snpvirt.manager import LOOKAHEAD, Manager, SpecInput
from tests.unit.fakehost import FakeHost, genoa_domcaps

# More specs than the workers and their lookahead hold at once: the main thread waits for them on the way.
BATCH = LOOKAHEAD + 8
BASE = {"memory_mib": 1024, "vcpus": 1, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}}


def spec_input(name: str, **changes) -> SpecInput:
    return SpecInput(f"{name}.toml", specs.parse_spec({**BASE, "name": name, **changes}))


def batch(prefix: str) -> list[SpecInput]:
    return [spec_input(f"{prefix}-{i:02d}") for i in range(BATCH)]


class CountingGate:
    """The CLI's gate on a captured host (--sysroot, --host-caps), counting how often it is asked."""

    def __init__(self, conn: Connection, host: FakeHost) -> None:
        self.conn, self.host, self.calls = conn, host, 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        return readiness.gate_report(self.conn, sysroot=self.host.root, domcaps_file=genoa_domcaps())


def manager(conn: Connection, gate) -> Manager:
    return Manager(conn, gate=gate, resolve_sev=lambda s: sevparams.resolve(s, []))


@pytest.fixture
def conn(clean_test_driver):
    with Connection("test:///default") as connection:
        yield connection


def names(conn: Connection) -> set[str]:
    return {record.name for record in conn.domains()}


def test_a_refusing_gate_ends_a_batch_with_nothing_defined_and_is_asked_once(conn, tmp_path):
    host = FakeHost(tmp_path / "unready")
    host.write("sys/module/kvm_amd/parameters/sev_snp", "N\n")
    gate = CountingGate(conn, host)
    before = names(conn)
    with pytest.raises(HostNotReadyError, match="nothing was changed"):
        manager(conn, gate).apply(batch("refused"))
    assert names(conn) == before
    assert gate.calls == 1, "every worker asked the gate again instead of taking its refusal"


def test_a_ready_gate_is_asked_once_for_a_whole_batch(conn, tmp_path):
    gate = CountingGate(conn, FakeHost(tmp_path / "ready"))
    outcomes = manager(conn, gate).apply(batch("ready"))
    assert all(o.ok and o.changed for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert gate.calls == 1


def test_results_come_back_in_the_order_given(conn):
    inputs = batch("order")
    outcomes = manager(conn, lambda: None).apply(inputs)
    assert [o.name for o in outcomes] == [i.spec.name for i in inputs]
    assert all(o.ok and o.state == "running" for o in outcomes)


def test_a_rendered_document_that_fails_the_schema_is_never_defined(conn):
    """A multicast MAC passes the spec's checks (any six hex pairs); libvirt's schema wants a unicast one
    (uniMacAddr). The schema check runs on a worker, before the define, in both apply and apply --check."""
    inputs = batch("schema")
    inputs[3] = spec_input("schema-bad", networks=[{"network": "default", "mac": "01:00:5e:00:00:01"}])
    for check in (True, False):
        outcomes = manager(conn, lambda: None).apply(inputs, check=check)
        bad = outcomes[3]
        assert not bad.ok and bad.action == "invalid" and "rendered XML breaks rule libvirt.schema" in bad.error.message
        assert all(o.ok for i, o in enumerate(outcomes) if i != 3)
    assert "schema-bad" not in names(conn) and "schema-00" in names(conn)
