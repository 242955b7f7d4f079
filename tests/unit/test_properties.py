"""Whatever the input, the result is a clear BadInputError or XML that passes every check.

These properties are also what lets `apply` skip libvirt's RNG schema for the XML it renders from a spec
(render.check_rendered): every spec that the spec checks (and sevparams) accept renders, as apply renders it,
into a document that libvirt's schema accepts. Rendering is never the step that rejects a spec here.
"""

import base64
from collections import Counter

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from snpvirt.domain import render, sevparams
from snpvirt.domain import xml as domxml
from snpvirt.domain import spec as specs
from snpvirt.domain import specvalues
from snpvirt.errors import BadInputError
from snpvirt.launch import inputs as launch
from snpvirt.launch import measure
from snpvirt.models import HostSevCaps, Stamp

BASE = {"name": "vm", "memory_mib": 1024, "vcpus": 1, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd",
        "snp": {"cbitpos": 51, "reduced_phys_bits": 1}}

# Characters that XML or libvirt's schema treat specially, drawn often: control characters, what XML 1.0 cannot
# carry (lone surrogates, which --set gives for bytes that are not UTF-8; U+FFFE, U+FFFF), C1 controls, an
# astral character, the path separator.
odd_char = st.sampled_from(["\x00", "\t", "\n", "\r", "\x1f", "\x7f", "\x85", "\ud800", "\udcff", "\ufffe",
                            "\uffff", "\U0001f600", " ", "/", ":", "&", "'", "<"])
# Characters no XML 1.0 document can carry, and the carriage return every parser turns into a line feed.
xml_illegal_char = st.sampled_from(["\x00", "\r", "\ud800", "\udcff", "\ufffe", "\uffff"])
# A list joined, not st.text: st.text leaves lone surrogates out whatever its alphabet says.
any_text = st.lists(st.one_of(st.characters(codec="utf-8"), odd_char), max_size=40).map("".join)
# Text a spec accepts: no control characters but tab and newline, no surrogates or XML noncharacters.
clean_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), include_characters="\t\n",
                                   exclude_characters="\ufffe\uffff"), max_size=40)
# libvirt's schema wants at least one character after the "/" (absFilePath), so "/" alone is no file path.
clean_path = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="\ufffe\uffff"),
                     min_size=1, max_size=40).map(lambda t: "/" + t)
valid_name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


def mostly(valid, anything):
    """Three times in four a valid value, else anything: every property reaches rendering in a real share
    of its examples (asserted by rendering_at_least), and still meets hostile values."""
    # Not one_of(valid, valid, valid, anything): one_of flattens nested one_ofs, which undoes the weights.
    return st.sampled_from([True, True, True, False]).flatmap(lambda pick_valid: valid if pick_valid else anything)


text_like = mostly(clean_text, any_text)
path_like = mostly(clean_path, st.one_of(any_text, any_text.map(lambda t: "/" + t), st.just("/")))
name_like = mostly(valid_name, st.one_of(any_text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}", fullmatch=True)))
blob = st.one_of(any_text, st.binary(max_size=4100).map(lambda b: base64.b64encode(b).decode()),
                 st.sampled_from([16, 32, 96, 4096]).map(lambda n: base64.b64encode(bytes(n)).decode()))
int_or_junk = st.one_of(st.integers(0, 600), st.integers(-2**70, 2**70), st.booleans(), any_text)


def around(lo, hi):
    """Inside the range, at its edges (inside and out), or anything at all."""
    return mostly(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi])),
                  st.one_of(st.integers(lo - 2, lo + 2), st.integers(hi - 2, hi + 2), int_or_junk))


def blob_of(size):
    """Mostly absent or right-sized, sometimes anything: each case then reaches rendering often enough."""
    right = st.binary(min_size=size, max_size=size).map(lambda b: base64.b64encode(b).decode())
    return mostly(st.one_of(st.none(), right), blob)


policy_flags = st.sampled_from(["smt", "migrate_ma", "single_socket", "cxl_allow", "mem_aes_256_xts", "rapl_dis",
                                "ciphertext_hiding", "page_swap_disable"])
valid_policy_int = st.integers(0, 2**26 - 1).map(lambda v: (v | 1 << 17) & ~(1 << 19))
valid_policy = st.one_of(valid_policy_int, valid_policy_int.map(hex),
                         st.dictionaries(policy_flags, st.booleans(), max_size=4),
                         st.fixed_dictionaries({}, optional={"abi_major": st.integers(0, 255), "abi_minor": st.integers(0, 255),
                                                             "smt": st.booleans(), "debug": st.just(False)}))
policy = mostly(valid_policy, st.one_of(
    st.integers(0, 2**26).map(lambda v: v | 1 << 17), st.integers(0, 2**64), st.integers(0, 2**26).map(hex), any_text,
    st.dictionaries(st.sampled_from(["smt", "debug", "migrate_ma", "single_socket", "abi_major", "bogus"]),
                    st.one_of(st.booleans(), st.integers(-1, 300)), max_size=4)))


def build(raw):
    vm = specs.parse_spec(raw)
    return render.render(vm, sevparams.resolve(vm, []))


# What the generated inputs of the running property test came to: "rendered" or "rejected".
OUTCOMES: Counter = Counter()


def assert_error_or_valid(raw, host_caps=None):
    """A spec is rejected by the spec checks with a clear error, or else rendered as apply renders it (launch
    record and stamp included), passed by apply's own check (render.check_rendered: the SNP rules, no schema),
    and then valid against libvirt's schema with every rule kept. A schema error here is a gap in the spec
    checks: apply would hand that document to libvirt unchecked."""
    sources = [sevparams.HostCapsSource(host_caps, "--host-caps test")] if host_caps is not None else []
    try:
        vm = specs.parse_spec(raw)
        sev = sevparams.resolve(vm, sources)
        record = launch.record(vm)  # apply's plan reads the launch files: a device there is refused too
    except BadInputError as err:
        assert err.message and err.hint and "\n" not in err.message
        OUTCOMES["rejected"] += 1
        event("rejected")
        return None
    xml = render.render_xml(vm, sev, Stamp("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00",
                                           record.expected.digests), record)
    render.check_rendered(vm.name, xml)  # apply's check before define: must not refuse what the spec checks passed
    findings = domxml.check(xml)  # libvirt's RNG schema, and the SNP rules again
    assert not [f for f in findings if f.severity == "error"], findings
    OUTCOMES["rendered"] += 1
    event("rendered")
    return etree.fromstring(xml.encode())


def rendering_at_least(share):
    """A property test whose every input is rejected proves nothing about rendering: run it, then require
    that at least `share` of its generated inputs rendered (and passed every check)."""
    def decorate(property_test):
        def test():
            OUTCOMES.clear()
            property_test()
            total = OUTCOMES["rendered"] + OUTCOMES["rejected"]
            assert total and OUTCOMES["rendered"] >= share * total, (
                f"only {OUTCOMES['rendered']} of {total} generated inputs rendered (at least {share:.0%} must): "
                "the property holds vacuously; did rendering start rejecting valid specs?")
        test.__name__, test.__doc__ = property_test.__name__, property_test.__doc__
        return test
    return decorate


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@rendering_at_least(0.15)
@SETTINGS
@given(name=name_like, description=text_like, cmdline=text_like, kernel=path_like)
def test_text_values(name, description, cmdline, kernel):
    root = assert_error_or_valid({**BASE, "name": name, "description": description,
                                  "boot": {"kernel": kernel, "cmdline": cmdline}})
    if root is not None:
        assert root.findtext("name") == name and root.findtext("os/cmdline") == cmdline
        assert (root.findtext("description") or "") == description


@rendering_at_least(0.25)
@SETTINGS
@given(memory=around(*specs.MEMORY_MIB_RANGE), vcpus=around(*specs.VCPUS_RANGE), cbitpos=around(1, 63),
       reduced=around(0, 63))
def test_numbers(memory, vcpus, cbitpos, reduced):
    root = assert_error_or_valid({**BASE, "memory_mib": memory, "vcpus": vcpus,
                                  "snp": {"cbitpos": cbitpos, "reduced_phys_bits": reduced}})
    if root is not None:
        assert root.findtext("vcpu") == str(vcpus) and root.findtext("launchSecurity/cbitpos") == str(cbitpos)


@rendering_at_least(0.1)
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


@rendering_at_least(0.15)
@SETTINGS
@given(where=st.sampled_from(["firmware", "kernel", "initrd", "disk"]),
       path=st.booleans().flatmap(lambda clean: clean_path if clean else st.one_of(
           st.just("/"), any_text.map(lambda t: "/" + t), any_text, st.tuples(clean_path, xml_illegal_char, clean_text).map("".join))))
def test_paths(where, path):
    """Every key whose file path is rendered, one at a time, with paths XML or libvirt's schema would refuse."""
    raw = {**BASE, "boot": {"kernel": "/vmlinuz", "initrd": "/initrd.img"}, "disks": [{"path": "/disk.qcow2"}]}
    if where == "disk":
        raw["disks"] = [{"path": path}]
    elif where == "firmware":
        raw["firmware"] = path
    else:
        raw["boot"] = {**raw["boot"], where: path}
    root = assert_error_or_valid(raw)
    if root is not None:
        shown = {"firmware": "os/loader", "kernel": "os/kernel", "initrd": "os/initrd"}
        assert (root.findtext(shown[where]) if where in shown else root.find("devices/disk/source").get("file")) == path


mac_like = mostly(st.from_regex(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", fullmatch=True), any_text)  # half multicast
bridge_like = mostly(st.from_regex(specs.BRIDGE_RE, fullmatch=True), any_text)
interface = st.one_of(st.fixed_dictionaries({"network": name_like}, optional={"mac": mac_like}),
                      st.fixed_dictionaries({"bridge": bridge_like}, optional={"mac": mac_like}))


@rendering_at_least(0.1)
@SETTINGS
@given(paths=st.lists(path_like, max_size=3), fmt=mostly(st.sampled_from(["qcow2", "raw"]), any_text),
       networks=st.lists(interface, max_size=2))
def test_devices(paths, fmt, networks):
    raw = {**BASE, "disks": [{"path": p, "format": fmt} for p in paths], "networks": networks}
    root = assert_error_or_valid(raw)
    if root is not None:
        assert [d.get("file") for d in root.iterfind("devices/disk/source")] == paths
        assert [i.get("address") for i in root.iterfind("devices/interface/mac")] == [n["mac"] for n in networks if "mac" in n]


host_int = st.one_of(st.none(), st.integers(0, 70), st.integers(0, 2**70), st.sampled_from([0, 1, 63, 64, 2**32, 2**64]))


@rendering_at_least(0.15)
@SETTINGS
@given(cbitpos=host_int, reduced=host_int, spec_cbitpos=st.one_of(st.none(), st.integers(1, 63)))
def test_host_capabilities(cbitpos, reduced, spec_cbitpos):
    """cbitpos and reducedPhysBits that a saved domcapabilities file (--host-caps) or the host gives."""
    caps = HostSevCaps(sev_supported=True, snp_advertised=True, cbitpos=cbitpos, reduced_phys_bits=reduced)
    snp = {} if spec_cbitpos is None else {"cbitpos": spec_cbitpos}
    root = assert_error_or_valid({**BASE, "snp": snp}, caps)
    if root is not None:
        assert root.findtext("launchSecurity/cbitpos") == str(spec_cbitpos if spec_cbitpos is not None else cbitpos)
        assert root.findtext("launchSecurity/reducedPhysBits") == str(reduced)


@st.composite
def valid_specs(draw):
    """Specs that break no rule: every one of them must render, whatever the values."""
    raw = {"name": draw(valid_name), "memory_mib": draw(st.integers(*specs.MEMORY_MIB_RANGE)),
           "vcpus": draw(st.integers(*specs.VCPUS_RANGE)), "firmware": draw(clean_path), "description": draw(clean_text),
           "cpu_model": draw(st.sampled_from([*sorted(measure.CPU_MODELS), measure.HOST_PASSTHROUGH])),
           "memory_backing": draw(st.sampled_from(["memfd", "default"]))}
    if draw(st.booleans()):
        raw["uuid"] = str(draw(st.uuids()))
    snp = {"cbitpos": draw(st.integers(1, 63)), "reduced_phys_bits": draw(st.integers(0, 63)), "policy": draw(valid_policy)}
    for key, size in (("host_data", 32), ("guest_visible_workarounds", 16)):
        if draw(st.booleans()):
            snp[key] = base64.b64encode(draw(st.binary(min_size=size, max_size=size))).decode()
    if draw(st.booleans()):
        snp["id_block"] = base64.b64encode(draw(st.binary(min_size=96, max_size=96))).decode()
        if draw(st.booleans()):
            snp["id_auth"] = base64.b64encode(draw(st.binary(min_size=4096, max_size=4096))).decode()
    if draw(st.booleans()):
        raw["boot"] = {"kernel": draw(clean_path), "cmdline": draw(clean_text)}
        if draw(st.booleans()):
            raw["boot"]["initrd"] = draw(clean_path)
        snp["kernel_hashes"] = draw(st.booleans())
    raw["snp"] = snp
    raw["disks"] = draw(st.lists(st.fixed_dictionaries({"path": clean_path}, optional={
        "format": st.sampled_from(["qcow2", "raw"]), "readonly": st.booleans()}), max_size=3))
    unicast_mac = st.from_regex(r"52:54:00(:[0-9a-f]{2}){3}", fullmatch=True)
    raw["networks"] = draw(st.lists(st.one_of(
        st.fixed_dictionaries({"network": valid_name}, optional={"mac": unicast_mac}),
        st.fixed_dictionaries({"bridge": st.from_regex(specs.BRIDGE_RE, fullmatch=True)}, optional={"mac": unicast_mac})),
        max_size=2))
    return raw


@SETTINGS
@given(raw=valid_specs())
def test_every_valid_spec_renders(raw):
    """The other side of the properties above: a spec that breaks no rule is never refused."""
    result = build(raw)  # a BadInputError here fails the test: valid input was rejected
    assert not [f for f in domxml.check(result.xml) if f.severity == "error"]
    root = etree.fromstring(result.xml.encode())
    assert (root.findtext("name"), root.findtext("vcpu"), root.findtext("memory")) == (
        raw["name"], str(raw["vcpus"]), str(raw["memory_mib"]))
    assert (root.findtext("description") or "") == raw["description"]
    assert root.findtext("launchSecurity/cbitpos") == str(raw["snp"]["cbitpos"])
    policy_value = int(root.findtext("launchSecurity/policy"), 16)
    assert policy_value & (1 << 17) and not policy_value & (1 << 19)
    assert [d.get("file") for d in root.iterfind("devices/disk/source")] == [d["path"] for d in raw["disks"]]
    assert len(root.findall("devices/interface")) == len(raw["networks"])
    if "boot" in raw:
        assert (root.findtext("os/kernel"), root.findtext("os/cmdline")) == (raw["boot"]["kernel"], raw["boot"]["cmdline"])


# A public key only (its private half was thrown away): the seed's user logs in with it.
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICpQA7F1uGx1g311HJ+Zh3rWrcT3mHQ34joTjGadCE8O demo"
volume_like = mostly(valid_name, st.one_of(any_text, st.sampled_from([".", "..", "-x", "a/b", ""])))
pool_disk = st.fixed_dictionaries({"pool": name_like, "volume": volume_like},
                                  optional={"size_gib": around(1, 65536), "backing": volume_like})


@rendering_at_least(0.1)
@SETTINGS
@given(disks=st.lists(pool_disk, max_size=3), kernel=st.one_of(st.none(), st.fixed_dictionaries({"pool": name_like, "volume": volume_like})),
       user=st.one_of(st.none(), mostly(st.from_regex(r"[a-z_][a-z0-9_-]{0,30}", fullmatch=True), any_text)),
       hostname=st.one_of(st.none(), mostly(st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True), any_text)),
       fleet=st.one_of(st.none(), valid_name), kernel_path_on_host=path_like)
def test_pool_volumes_seed_and_fleet(disks, kernel, user, hostname, fleet, kernel_path_on_host):
    """Pool disks, boot files from a pool, the cloud-init seed disk and the owning fleet's name: what the spec
    checks admit of these renders into schema-valid XML as well (apply does not run the schema on it). A boot
    volume's path is the host's answer (`kernel_path_on_host`, anything a lying host may say): it passes
    specvalues.host_path, as orchestration/volumes.py resolves it, or is refused."""
    import dataclasses

    raw = {**BASE, "disks": disks}
    if kernel is not None:
        raw["boot"] = {"kernel": kernel, "cmdline": "console=ttyS0"}
    if user is not None or hostname is not None:
        raw["cloud_init"] = {**({"user": user, "ssh_authorized_keys": [SSH_KEY]} if user is not None else {}),
                             **({"hostname": hostname} if hostname is not None else {})}
    try:
        vm = specs.parse_spec(raw)
        if vm.boot.kernel_volume is not None:
            vm = dataclasses.replace(vm, boot=dataclasses.replace(vm.boot, kernel=specvalues.host_path("boot.kernel", kernel_path_on_host)))
    except BadInputError as err:
        assert err.message and err.hint and "\n" not in err.message
        OUTCOMES["rejected"] += 1
        return
    if fleet is not None:
        vm = dataclasses.replace(vm, fleet=fleet)
    xml = render.render_xml(vm, sevparams.resolve(vm, []), None, None, seed_sha256="ab" * 32 if vm.cloud_init else None)
    render.check_rendered(vm.name, xml)
    assert not [f for f in domxml.check(xml) if f.severity == "error"]
    OUTCOMES["rendered"] += 1
    root = etree.fromstring(xml.encode())
    sources = [(s.get("pool"), s.get("volume")) for s in root.iterfind("devices/disk/source") if s.get("volume")]
    assert sources[:len(disks)] == [(d["pool"], d["volume"]) for d in disks]
    seed = root.find("devices/disk/readonly/..[@type='volume']")
    assert (seed is not None) == (vm.cloud_init is not None)
