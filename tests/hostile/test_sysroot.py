"""Hostile `--sysroot` trees for `host check`: a captured host whose files are folders, links that
loop, garbage, odd text, garbage CPUID, broken firmware descriptors, FIFOs and huge files."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLES
from tests.hostile.conftest import run_with_special
from tests.hostile.contract import assert_contract, run_in_process
from tests.hostile.strategies import odd_text
from tests.unit.fakehost import FakeHost, genoa_domcaps

HOSTILE = settings.get_profile("hostile")

DESCRIPTOR = "usr/share/qemu/firmware/60-edk2-ovmf-x64-amdsev.json"
FIRMWARE = "usr/share/edk2/ovmf/OVMF.amdsev.fd"  # what the descriptor above names
CPUID = "dev/cpu/0/cpuid"
FACT_FILES = ["proc/cpuinfo", "proc/sys/kernel/osrelease", "proc/cmdline", "etc/passwd", "etc/group",
              "etc/libvirt/qemu.conf", "sys/module/kvm_amd/parameters/sev_snp", "sys/module/kvm_amd/parameters/debug_swap",
              "sys/devices/system/cpu/smt/active", DESCRIPTOR, "etc/qemu/firmware/50-extra.json", FIRMWARE, CPUID,
              "dev/sev", "dev/kvm"]
FACT_FOLDERS = ["sys/class/iommu", "usr/share/qemu/firmware", "sys/module/kvm_amd/parameters", "dev/cpu/0", "etc"]

# Text that has broken small parsers: non-ASCII digits (int() and isdigit() accept them), lines
# without separators, huge numbers, colons, NULs.
ODD_LINES = ["libvirt-qemu:x:\u00b2:\u0663:\u00b2:/:/bin/sh", "kvm:x:\u0663\u0660\u0666:libvirt-qemu",
             "libvirt-qemu:x:99999999999999999999999:1::/:", "::::", "user = \"\u0663\"", "user = \"+\u00b2\"",
             'user = "root"', 'user = "+0"', "6.\u0663.0", "99999999999999999999.1-snp", "flags\t\t:", "vendor_id :",
             "model name\t: " + "x" * 5000, "\x00\x00", "Y\nN", "2", "-1"]


def _json_garbage(depth: int):
    value = {"mapping": {"device": "memory", "filename": 5}}
    for _ in range(depth):
        value = {"mapping": value, "features": [value]}
    return value


DESCRIPTORS = [
    {"features": "amd-sev-snp", "mapping": {"device": "memory", "filename": 7}},
    {"features": ["amd-sev-snp"], "mapping": {"device": "flash", "executable": {"filename": ["a"]}}},
    {"features": ["amd-sev-snp"], "mapping": {"device": "flash", "executable": "/x", "nvram-template": 3}},
    {"features": ["amd-sev-snp"], "mapping": {"device": "memory", "filename": "relative/path.fd"}},
    {"features": ["amd-sev-snp"], "mapping": {"device": "memory", "filename": "/../../../etc/passwd"}},
    {"features": ["amd-sev-snp"], "mapping": {"device": "memory", "filename": "/\u0663\u202e\n.fd"}},
    {"features": [{"a": 1}], "mapping": []},
    [1, 2, 3],
    None,
    "amd-sev-snp",
]

content = st.one_of(
    st.binary(max_size=64),
    odd_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(ODD_LINES).map(str.encode),
    st.lists(st.sampled_from(ODD_LINES), min_size=1, max_size=4).map(lambda lines: "\n".join(lines).encode()),
    st.sampled_from(DESCRIPTORS).map(lambda d: json.dumps(d).encode()),
    st.integers(1, 3000).map(lambda depth: ("[" * depth + "]" * depth).encode()),  # json recursion
    st.just(b"\xff\xfe\x00garbage"),
    st.just(b"x" * 2_000_000),
)
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), odd_text,
                                     st.sampled_from(["amd-sev-snp", "memory", "flash", "stateless", "/x.fd"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
                           max_leaves=8)
descriptors = st.one_of(
    st.sampled_from(DESCRIPTORS),
    st.fixed_dictionaries({"features": st.one_of(st.just(["amd-sev-snp"]), json_values)},
                          optional={"mapping": st.fixed_dictionaries(
                              {"device": st.one_of(st.sampled_from(["memory", "flash"]), json_values)},
                              optional={"filename": json_values, "mode": json_values, "nvram-template": json_values,
                                        "executable": st.one_of(json_values, st.fixed_dictionaries({"filename": json_values}))})}),
).map(lambda d: json.dumps(d).encode())
cpuid_registers = st.tuples(*[st.integers(0, 2 ** 32 - 1)] * 4)
edits = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FACT_FILES), content),
    st.tuples(st.just("write"), st.sampled_from([DESCRIPTOR, "etc/qemu/firmware/50-extra.json"]), descriptors),
    st.tuples(st.just("remove"), st.sampled_from(FACT_FILES + FACT_FOLDERS), st.none()),
    st.tuples(st.just("directory"), st.sampled_from(FACT_FILES), st.none()),
    st.tuples(st.just("file-for-folder"), st.sampled_from(FACT_FOLDERS), content),
    st.tuples(st.just("symlink-loop"), st.sampled_from(FACT_FILES + FACT_FOLDERS), st.none()),
    st.tuples(st.just("dangling-link"), st.sampled_from(FACT_FILES + FACT_FOLDERS), st.none()),
    st.tuples(st.just("cpuid"), st.sampled_from([0, 0x8000001F]), cpuid_registers),
    st.tuples(st.just("cpuid-truncate"), st.integers(0, 0x8000001F + 20), st.none()),
), min_size=1, max_size=5)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def hostile_host(root: Path, changes) -> FakeHost:
    host = FakeHost(root)
    cpuid = root / CPUID
    for op, relative, value in changes:
        if op.startswith("cpuid"):
            if cpuid.is_file() and not cpuid.is_symlink():  # the sparse file FakeHost wrote, not an edit of it
                if op == "cpuid":
                    with open(cpuid, "r+b") as handle:
                        handle.seek(relative)
                        handle.write(struct.pack("<4I", *value))
                else:
                    os.truncate(cpuid, relative)
            continue
        path = root / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue  # an earlier edit made a parent folder a file or a link: nothing to put below it
        if op == "write":
            _clear(path)
            path.write_bytes(value)
        elif op == "remove":
            _clear(path)
        elif op == "directory":
            _clear(path)
            path.mkdir()
        elif op == "file-for-folder":
            _clear(path)
            path.write_bytes(value)
        elif op == "symlink-loop":
            _clear(path)
            path.symlink_to(path.name)
        elif op == "dangling-link":
            _clear(path)
            path.symlink_to(root / "nowhere")
    return host


POLICIES = [[], ["--policy", "0x30000"], ["--policy", "0xffffffffffffffff"], ["--policy", str(EXAMPLES / "web-01.toml")]]


@HOSTILE
@given(changes=edits, policy=st.sampled_from(POLICIES))
@example(changes=[("write", "etc/passwd", "libvirt-qemu:x:\u00b2:\u0663::/:/bin/sh\n".encode())], policy=[])
@example(changes=[("write", DESCRIPTOR, b"[" * 3000 + b"]" * 3000)], policy=[])
@example(changes=[("write", DESCRIPTOR, json.dumps(DESCRIPTORS[0]).encode())], policy=[])
@example(changes=[("write", DESCRIPTOR, json.dumps(DESCRIPTORS[1]).encode())], policy=[])  # a list as file name
@example(changes=[("write", "etc/libvirt/qemu.conf", 'user = "\u00b2"\n'.encode())], policy=[])
@example(changes=[("file-for-folder", "dev/cpu/0", b"x")], policy=[])  # opening the cpuid device: ENOTDIR
def test_host_check_hostile_sysroot(changes, policy):
    with tempfile.TemporaryDirectory(prefix="hostile-sysroot-") as folder:
        root = Path(folder) / "host"
        hostile_host(root, changes)
        result = run_in_process("host", "check", "--sysroot", root, "--host-caps", genoa_domcaps(), "--json", *policy)
        assert_contract(result)
        assert result.code in (0, 2, 3), result.describe()


def test_the_unharmed_fake_host_is_ready(workdir):
    """Without this, a harness where every host is 'not ready' would pass the test above."""
    root = workdir / "ready-host"
    FakeHost(root)
    result = run_in_process("host", "check", "--sysroot", root, "--host-caps", genoa_domcaps(), "--json")
    doc = assert_contract(result)
    assert result.code == 0 and doc["ready"], result.describe()


def test_a_host_that_is_not_ready_has_the_envelope_error(workdir):
    """Found by this tier: `host check --json` exited 3 with ok false and no top-level error."""
    root = workdir / "not-ready-host"
    FakeHost(root).remove("dev/kvm")
    result = run_in_process("host", "check", "--sysroot", root, "--host-caps", genoa_domcaps(), "--json")
    doc = assert_contract(result)
    assert result.code == 3 and doc["error"]["kind"] == "not_ready" and "kvm.dev" in doc["error"]["message"], result.describe()


# --- fact files that block or never end (real processes) --------------------------------------------

SLOW_FACTS = ["proc/cpuinfo", "etc/passwd", "sys/module/kvm_amd/parameters/sev_snp", DESCRIPTOR, FIRMWARE, CPUID,
              "proc/sys/kernel/osrelease"]


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-zero", "huge-sparse"])
@pytest.mark.parametrize("fact", SLOW_FACTS)
def test_host_check_fact_file_that_may_hang(workdir, fact, kind):
    root = workdir / f"slow-{kind}-{fact.replace('/', '_')}"
    FakeHost(root)
    path = root / fact
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as handle:
            handle.truncate(6 << 30)
    result = run_with_special(kind, "host", "check", "--sysroot", root, "--host-caps", genoa_domcaps(), "--json",
                              "--policy", EXAMPLES / "web-01.toml")
    assert_contract(result)
    assert result.code in (0, 3), result.describe()
