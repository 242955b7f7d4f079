"""Hostile fleet files: `fleet plan` answers with a clean error (one key named) or a plan, never a
traceback or a hang. The hosts are libvirt's in-process test driver: no daemon, nothing of this machine."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from snpvirt.fleet import fleetfile
from tests.hostile.conftest import SPECIAL_INPUTS, make_special, run_with_special
from tests.hostile.contract import assert_contract, run_in_process
from tests.hostile.strategies import RawToml, nested, odd_text, toml_document, values
from tests.hostile.test_spec_files import HOSTILE, _key_paths, edited

SPEC = 'name = "vm"\nmemory_mib = 256\nvcpus = 1\nfirmware = "/usr/share/ovmf/OVMF.amdsev.fd"\n' \
       '[snp]\ncbitpos = 51\nreduced_phys_bits = 1\n'
BASE_TEXT = """\
[fleet]
name = "hostile"
connect_timeout_s = 5

[[hosts]]
name = "sim"
uri = "test:///default"
snp_guests = 4
labels = { rack = "r1" }

[[domains]]
spec = "vm.toml"
count = 2
"""
BASE = tomllib.loads(BASE_TEXT)
# Every key but a host's uri: a generated URI could name a real hypervisor of this machine.
KEY_PATHS = [p for p in _key_paths(fleetfile.SCHEMA) if p[-1] != "uri"] + [
    ("bogus",), ("fleet", "bogus"), ("hosts", 0, "bogus"), ("domains", 3, "spec"), ("hosts", 1, "name")]

edits = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEY_PATHS), values),
    st.tuples(st.just("delete"), st.sampled_from(KEY_PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from([(), ("fleet",), ("hosts", 0), ("domains", 0)]), st.tuples(odd_text, values)),
), min_size=1, max_size=4)


def plan_and_check(fleet_text: str):
    with tempfile.TemporaryDirectory(prefix="hostile-fleet-") as folder:
        (Path(folder) / "vm.toml").write_text(SPEC)
        fleet = Path(folder) / "fleet.toml"
        fleet.write_text(fleet_text)
        result = run_in_process("fleet", "plan", fleet, "--json")
        return result, assert_contract(result)


def test_the_unharmed_fleet_plans():
    result, doc = plan_and_check(BASE_TEXT)
    assert result.code == 0 and [i["name"] for i in doc["results"]] == ["vm-1", "vm-2"], result.describe()


@HOSTILE
@given(changes=edits)
@example(changes=[("set", ("domains", 0, "count"), RawToml("9" * 5000))])
@example(changes=[("set", ("hosts", 0, "labels"), nested(3000))])
@example(changes=[("set", ("fleet", "connect_timeout_s"), RawToml("inf"))])
@example(changes=[("add", ("hosts", 0), ("a\nsnpvirt: error: forged\x1b[2J", 1))])
def test_hostile_fleet_values(changes):
    result, _ = plan_and_check(toml_document(edited(BASE, changes)))
    assert result.code in (0, 2, 9), result.describe()


@pytest.mark.parametrize("kind", SPECIAL_INPUTS)
def test_fleet_file_that_is_not_a_regular_file(workdir, kind):
    fleet = make_special(kind, workdir / "fleet-files", "fleet")
    result = run_with_special(kind, "fleet", "check", fleet, "--json")
    assert_contract(result)
    assert result.code == 2, result.describe()
