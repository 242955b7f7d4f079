"""Whatever the input, the result is a clear BadInputError or XML that passes every check."""

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from snpvirt import domxml, render, sevparams
from snpvirt import spec as specs
from snpvirt.errors import BadInputError

BASE = {"name": "vm", "memory_mib": 1024, "vcpus": 1, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}}

any_text = st.text(st.characters(codec="utf-8"), max_size=40)
path_like = st.one_of(any_text, any_text.map(lambda t: "/" + t))
name_like = st.one_of(any_text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True))
blob = st.one_of(any_text, st.binary(max_size=4100).map(lambda b: base64.b64encode(b).decode()),
                 st.sampled_from([16, 32, 96, 4096]).map(lambda n: base64.b64encode(bytes(n)).decode()))
int_or_junk = st.one_of(st.integers(0, 600), st.integers(-2**70, 2**70), st.booleans(), any_text)


def around(lo, hi):
    """Inside the range, at its edges, or anything at all."""
    return st.one_of(st.integers(lo, hi), st.integers(lo - 2, lo + 2), st.integers(hi - 2, hi + 2),
                     st.integers(lo, hi), int_or_junk)


def blob_of(size):
    """Mostly absent or right-sized, sometimes anything: each case then reaches rendering often enough."""
    right = st.just(base64.b64encode(bytes(size)).decode())
    return st.one_of(st.none(), right, st.none(), right, blob)
policy = st.one_of(st.integers(0, 2**26).map(lambda v: v | 1 << 17), st.integers(0, 2**64), st.integers(0, 2**26).map(hex), any_text,
                   st.dictionaries(st.sampled_from(["smt", "debug", "migrate_ma", "single_socket", "abi_major", "bogus"]),
                                   st.one_of(st.booleans(), st.integers(-1, 300)), max_size=4))


def build(raw):
    vm = specs.parse_spec(raw)
    return render.render(vm, sevparams.resolve(vm, []))


def assert_error_or_valid(raw):
    try:
        result = build(raw)
    except BadInputError as err:
        assert err.message and err.hint and "\n" not in err.message
        return None
    findings = domxml.check(result.xml)
    assert not [f for f in findings if f.severity == "error"], findings
    return etree.fromstring(result.xml.encode())


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(name=name_like, description=any_text, cmdline=any_text, kernel=path_like)
def test_text_values(name, description, cmdline, kernel):
    root = assert_error_or_valid({**BASE, "name": name, "description": description,
                                  "boot": {"kernel": kernel, "cmdline": cmdline}})
    if root is not None:
        assert root.findtext("name") == name and root.findtext("os/cmdline") == cmdline
        assert (root.findtext("description") or "") == description


@SETTINGS
@given(memory=around(*specs.MEMORY_MIB_RANGE), vcpus=around(*specs.VCPUS_RANGE), cbitpos=around(1, 63),
       reduced=around(0, 63))
def test_numbers(memory, vcpus, cbitpos, reduced):
    root = assert_error_or_valid({**BASE, "memory_mib": memory, "vcpus": vcpus,
                                  "snp": {"cbitpos": cbitpos, "reduced_phys_bits": reduced}})
    if root is not None:
        assert root.findtext("vcpu") == str(vcpus) and root.findtext("launchSecurity/cbitpos") == str(cbitpos)


@SETTINGS
@given(value=policy, host_data=blob_of(32), gvw=blob_of(16), id_block=blob_of(96), id_auth=blob_of(4096))
def test_policy_and_blobs(value, host_data, gvw, id_block, id_auth):
    blobs = {"host_data": host_data, "guest_visible_workarounds": gvw, "id_block": id_block, "id_auth": id_auth}
    snp = {**BASE["snp"], "policy": value, **{k: v for k, v in blobs.items() if v is not None}}
    root = assert_error_or_valid({**BASE, "snp": snp})
    if root is not None:
        assert int(root.findtext("launchSecurity/policy"), 16) & (1 << 17)
        if host_data is not None:
            assert len(base64.b64decode(root.findtext("launchSecurity/hostData"), validate=True)) == 32


@SETTINGS
@given(paths=st.lists(path_like, max_size=3), fmt=st.one_of(any_text, st.sampled_from(["qcow2", "raw"])), networks=st.lists(name_like, max_size=2))
def test_devices(paths, fmt, networks):
    raw = {**BASE, "disks": [{"path": p, "format": fmt} for p in paths],
           "networks": [{"network": n} for n in networks]}
    root = assert_error_or_valid(raw)
    if root is not None:
        assert [d.get("file") for d in root.iterfind("devices/disk/source")] == paths
