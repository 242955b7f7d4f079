"""The spec: every kind of bad input gets a precise BadInputError; good input a complete VmSpec."""

import base64

import pytest

from snpvirt.domain import spec as specs
from snpvirt.errors import BadInputError

MINIMAL = {"name": "vm1", "memory_mib": 2048, "vcpus": 2, "firmware": "/usr/share/ovmf/OVMF.amdsev.fd"}


def parse(**changes):
    raw = {**MINIMAL, **changes}
    return specs.parse_spec({k: v for k, v in raw.items() if v is not None})


def rejects(match, **changes):
    with pytest.raises(BadInputError, match=match) as info:
        parse(**changes)
    assert info.value.hint, "every error carries a hint"
    return info.value


def test_minimal_spec_gets_the_documented_defaults():
    vm = parse()
    assert (vm.cpu_model, vm.memory_backing, vm.snp.policy, vm.snp.kernel_hashes) == ("EPYC-v4", "memfd", 0x30000, False)
    assert vm.disks == () and vm.networks == ()


def test_example_specs_load(tmp_path):
    from tests.conftest import EXAMPLES
    web = specs.load_spec(EXAMPLES / "web-01.toml")
    assert web.snp.kernel_hashes and web.boot.kernel and web.disks[0].target == "vda"
    db = specs.load_spec(EXAMPLES / "db-01.toml")
    assert db.snp.policy == 0x20000 and [d.target for d in db.disks] == ["vda", "vdb"]


def test_malformed_toml_names_line_and_column():
    with pytest.raises(BadInputError, match=r"malformed TOML: .*line 2, column \d+"):
        specs.load_spec_text('name = "a"\nvcpus = = 4\n', "vm.toml")


def test_unknown_key_suggests_the_closest_valid_one():
    err = rejects("unknown key 'vcpu'", vcpu=2)
    assert "did you mean 'vcpus'" in err.hint
    err = rejects(r"unknown key 'snp.polcy'", snp={"polcy": "0x30000"})
    assert "'policy'" in err.hint
    rejects(r"unknown key 'snp.policy.smtt'", snp={"policy": {"smtt": True}})


@pytest.mark.parametrize("changes,match", [
    ({"vcpus": "4"}, "vcpus: expected an integer, got a string"),
    ({"vcpus": True}, "vcpus: expected an integer, got a boolean"),
    ({"memory_mib": 2048.0}, "memory_mib: expected an integer"),
    ({"boot": "vmlinuz"}, "boot: expected a table"),
    ({"disks": {"path": "/x"}}, "disks: expected an array of tables"),
    ({"snp": {"kernel_hashes": "yes"}}, "snp.kernel_hashes: expected true or false"),
    ({"snp": {"policy": {"smt": 1}}}, "snp.policy.smt: expected true or false"),
])
def test_wrong_types(changes, match):
    rejects(match, **changes)


@pytest.mark.parametrize("changes,match", [
    ({"memory_mib": 64}, r"memory_mib: 64 is out of range 128\.\."),
    ({"vcpus": 0}, r"vcpus: 0 is out of range 1\.\.512"),
    ({"vcpus": 513}, "out of range"),
    ({"snp": {"cbitpos": 64}}, "snp.cbitpos: 64 is out of range"),
])
def test_out_of_range(changes, match):
    rejects(match, **changes)


@pytest.mark.parametrize("name", ["web 01", "a/b", "<x>", "a&b", "it's", 'q"', "", ".hidden", "x" * 65, "é"])
def test_bad_names(name):
    rejects("name: .* is not a valid domain name", name=name)


def test_missing_required_key():
    with pytest.raises(BadInputError, match="missing required key 'firmware'"):
        specs.parse_spec({k: v for k, v in MINIMAL.items() if k != "firmware"})
    rejects(r"disks\[0\]: give either 'path' or 'pool' and 'volume'", disks=[{"format": "raw"}])


@pytest.mark.parametrize("blob,size", list(specs.BLOB_BYTES.items()))
def test_blobs_need_strict_base64_of_the_exact_length(blob, size):
    good = base64.b64encode(bytes(size)).decode()
    assert getattr(parse(snp={blob: good, **({"id_block": base64.b64encode(bytes(96)).decode()} if blob == "id_auth" else {})}).snp, blob) == good
    rejects(f"snp.{blob}: decodes to {size - 1} bytes, SEV-SNP needs exactly {size}",
            snp={blob: base64.b64encode(bytes(size - 1)).decode()})
    # A stray character is an error, not silently dropped (RFC 4648 strict decoding).
    rejects(f"snp.{blob}: is not valid base64", snp={blob: good[:4] + "!" + good[4:]})
    rejects(f"snp.{blob}: is not valid base64", snp={blob: good + "\n"})


def test_policy_forms():
    assert parse(snp={"policy": "0x30000"}).snp.policy == 0x30000
    assert parse(snp={"policy": 0x30000}).snp.policy == 0x30000
    assert parse(snp={"policy": {"smt": False}}).snp.policy == 0x20000
    assert parse(snp={"policy": {"smt": True, "abi_major": 1, "abi_minor": 51}}).snp.policy == 0x30133
    rejects("reserved bits", snp={"policy": "0x4030000"})
    rejects("bit 17 clear", snp={"policy": "0x24"})
    rejects("not a hexadecimal number", snp={"policy": "0xzz"})


def test_debug_needs_allow_debug():
    err = rejects("allows debugging", snp={"policy": {"debug": True}})
    assert "--allow-debug" in err.hint
    vm = specs.parse_spec({**MINIMAL, "snp": {"policy": {"debug": True, "smt": True}}}, allow_debug=True)
    assert vm.snp.policy == 0xB0000


def test_kernel_hashes_rules():
    rejects("kernel_hashes = true needs boot.kernel", snp={"kernel_hashes": True})
    assert parse(boot={"kernel": "/boot/vmlinuz"}).snp.kernel_hashes is True
    assert parse(boot={"kernel": "/boot/vmlinuz"}, snp={"kernel_hashes": False}).snp.kernel_hashes is False
    rejects("without boot.kernel", boot={"cmdline": "console=ttyS0"})


def test_paths_must_be_absolute_and_clean():
    rejects("firmware: .* is not an absolute file path", firmware="OVMF.fd")
    rejects("is not an absolute file path", boot={"kernel": "/boot/vm\x00linuz"})
    rejects("description: contains control characters", description="a\x01b")


@pytest.mark.parametrize("path", ["/", "/boot/vm\udcfflinuz", "/boot/\ud800", "/boot/vmlinuz\ufffe", "/x\uffff"])
def test_paths_that_name_no_file_or_cannot_be_in_xml_are_refused(path):
    """apply defines the rendered XML without libvirt's schema: a path the schema (absFilePath: a character
    after the "/") or XML 1.0 (no lone surrogates, as --set gives for bytes that are not UTF-8) would refuse
    is refused here, for every key whose path is rendered."""
    rejects(r"disks\[0\]\.path: .* is not an absolute file path", disks=[{"path": path}])
    rejects("firmware: .* is not an absolute file path", firmware=path)
    rejects(r"boot\.initrd: .* is not an absolute file path", boot={"kernel": "/vmlinuz", "initrd": path})
    assert parse(disks=[{"path": "/a"}]).disks[0].path == "/a"


def test_an_interface_mac_is_unicast():
    err = rejects(r"networks\[0\]\.mac: 01:00:5e:00:00:01 is a multicast address", networks=[{"network": "default", "mac": "01:00:5e:00:00:01"}])
    assert "52:54:00" in err.hint
    rejects("multicast", networks=[{"bridge": "br0", "mac": "FF:FF:FF:FF:FF:FF"}])
    assert parse(networks=[{"network": "default", "mac": "52:54:00:AB:cd:01"}]).networks[0].mac == "52:54:00:AB:cd:01"
    assert parse(networks=[{"network": "default", "mac": "fe:00:00:00:00:01"}]).networks[0].mac  # locally administered, unicast


def test_networks_need_exactly_one_source():
    rejects(r"networks\[0\]: give exactly one of", networks=[{"network": "default", "bridge": "br0"}])
    rejects(r"networks\[0\]: give exactly one of", networks=[{}])
    rejects(r"networks\[0\]\.mac", networks=[{"network": "default", "mac": "52:54:00:zz:00:01"}])


def test_id_auth_and_author_key_need_their_partners():
    rejects("author_key = true needs snp.id_auth", snp={"author_key": True})
    rejects("id_auth is set without snp.id_block", snp={"id_auth": base64.b64encode(bytes(4096)).decode()})


def test_overrides():
    raw = {**MINIMAL, "disks": [{"path": "/a.qcow2"}], "snp": {"policy": "0x30000"}}
    out = specs.apply_overrides(raw, ["vcpus=8", "snp.policy.smt=false", "disks.0.format=raw", "name=web-02",
                                      "boot.cmdline=console=ttyS0 quiet"])
    assert raw["vcpus"] == 2, "the original is not modified"
    vm = specs.parse_spec({**out, "boot": {**out["boot"], "kernel": "/k"}})
    assert (vm.vcpus, vm.snp.policy, vm.disks[0].format, vm.name, vm.boot.cmdline) == (
        8, 0x20000, "raw", "web-02", "console=ttyS0 quiet")


@pytest.mark.parametrize("assignment,match", [
    ("vcpus", "is not KEY=VALUE"),
    ("=4", "is not KEY=VALUE"),
    ("disks.3.path=/x", "'disks.3' is not an existing array entry"),
    ("vcpus.x=1", "'vcpus' is a value, not a table"),
])
def test_bad_overrides(assignment, match):
    with pytest.raises(BadInputError, match=match):
        specs.apply_overrides({**MINIMAL, "disks": [{"path": "/a"}]}, [assignment])


# --- a key pasted where its file name belongs is never repeated -------------------------------------

def _pem_private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


IN_SPEC = ["id_key in the spec", "author_key in the spec"]
BY_SET = ["--set snp.id_key", "--set snp.policy"]  # a key pasted into the wrong option is no less a secret


@pytest.mark.parametrize("verb, how", [
    *[(verb, how) for verb in (["render"], ["render", "--json"], ["measure", "--json"]) for how in IN_SPEC + BY_SET],
    *[(["apply", "--check", "--json", "-c", "test:///default"], how) for how in IN_SPEC]])
def test_an_inline_private_key_is_not_echoed(tmp_path, verb, how):
    from tests.conftest import run_cli

    pem = _pem_private_key()
    spec = tmp_path / "vm.toml"
    text = 'name = "vm1"\nmemory_mib = 2048\nvcpus = 2\nfirmware = "/usr/share/ovmf/OVMF.amdsev.fd"\n[snp]\n'
    extra = []
    if how == "id_key in the spec":
        text += f'id_key = """{pem}"""\n'
    elif how == "author_key in the spec":
        text += f'id_key = "/etc/snpvirt/id.pem"\nauthor_key = """{pem}"""\n'
    else:
        extra = ["--set", f"{how.split()[1]}={pem}"]
    spec.write_text(text)
    result = run_cli(*verb, spec, *extra)
    assert result.code == 2, (result.code, result.stderr)
    assert "not repeated: it may be a secret" in result.stdout + result.stderr
    secret_lines = [line for line in pem.splitlines() if line.strip()]
    assert len(secret_lines) >= 3
    for line in secret_lines:
        assert line not in result.stdout and line not in result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_an_ordinary_rejected_value_is_still_quoted():
    assert "'relative/OVMF.fd' is not an absolute file path" in rejects("absolute", firmware="relative/OVMF.fd").message
    assert "not repeated" in rejects("absolute", snp={"id_key": "key.pem"}).message, "a key's value is never repeated"


def test_run_state_defaults_and_checks():
    vm = parse()
    assert (vm.state, vm.autostart) == ("running", None), "a silent spec leaves autostart as it is"
    vm = parse(state="shutoff", autostart=True)
    assert (vm.state, vm.autostart) == ("shutoff", True)
    assert "state" not in vm.source and "autostart" not in vm.source, "the run state is not part of the definition"
    rejects(r"state: 'paused' is not one of running, shutoff", state="paused")
    rejects(r"autostart: expected true or false", autostart="yes")


def test_a_path_from_set_with_bytes_that_are_not_utf8_is_bad_input():
    """--set firmware=/$'\\xff' reaches the spec as a lone surrogate: refused by the spec check, exit 2, where
    rendering it used to end in 'internal error: UnicodeEncodeError'."""
    from tests.conftest import EXAMPLES, run_cli

    result = run_cli("render", EXAMPLES / "web-01.toml", "--set", "firmware=/\udcff", bare=True)
    assert result.code == 2, (result.code, result.stderr)
    assert result.stderr.startswith("snpvirt: error: firmware: ") and "internal error" not in result.stderr


@pytest.mark.parametrize("levels", [specs.MAX_NESTING - 1, specs.MAX_NESTING, 200])
def test_tables_and_arrays_nested_too_deep_are_refused(levels):
    """deepcopy (--set) and json (the metadata) walk a spec recursively: nesting is bounded before them.
    `x` holds arrays nested `levels` deep: its innermost value sits at depth levels + 1."""
    text = "x = " + "[" * levels + "1" + "]" * levels
    if levels + 1 > specs.MAX_NESTING:
        with pytest.raises(BadInputError, match=f"nested more than {specs.MAX_NESTING} levels deep"):
            specs.load_spec_text(text)
    else:
        assert specs.load_spec_text(text)["x"]
    inline = "x = " + "{a = " * levels + "1" + "}" * levels  # inline tables count alike
    if levels + 1 > specs.MAX_NESTING:
        with pytest.raises(BadInputError, match="levels deep"):
            specs.load_spec_text(inline)
