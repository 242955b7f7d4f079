"""The launch measurement, bit for bit against every QEMU SNP vector in tests/data/measurement."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from snpvirt import launch, measure
from snpvirt.cli.app import run
from snpvirt.errors import BadInputError
from tests.conftest import vector


def upstream_cases():
    cases = json.loads(vector("measurement/expected-upstream.json").read_text())["launch_digest"]
    return [pytest.param(c, id=c["name"]) for c in cases
            if c["mode"] in ("snp", "snp:ovmf-hash") and c.get("vmm_type", "QEMU") in ("QEMU", None)]


def _digest(path):
    return hashlib.sha256(b"" if path in (None, "/dev/null") else vector(f"measurement/{path}").read_bytes()).digest()


@pytest.mark.parametrize("case", upstream_cases())
def test_upstream_vectors(case):
    image = vector(f"measurement/{case['ovmf']}").read_bytes()
    if case["mode"] == "snp:ovmf-hash":
        assert measure.firmware_seed(image).hex() == case["expected"]
        return
    hashes = None
    if case.get("kernel"):
        hashes = measure.KernelHashes.of(_digest(case["kernel"]), _digest(case["initrd"]) if case.get("initrd") else None,
                                         case.get("append"))
    seed = bytes.fromhex(case["snp_ovmf_hash"]) if case.get("snp_ovmf_hash") else None
    kwargs = dict(vcpus=case["vcpus"], signature=measure.vcpu_signature(case["vcpu_type"]),
                  guest_features=case["guest_features"], kernel_hashes=hashes, firmware_ld=seed)
    if "expected_error" in case:
        with pytest.raises(BadInputError, match="no SNP_KERNEL_HASHES section"):
            measure.measure(image, **kwargs)
    else:
        assert measure.measure(image, **kwargs).hex == case["expected"]


def derived_cases():
    cases = json.loads(vector("measurement/derived-sev-snp-measure-vectors.json").read_text())["cases"]
    return [pytest.param(c, id=c["desc"]) for c in cases]


def to_snpvirt_args(cli_args):
    """sev-snp-measure's arguments -> snpvirt measure's, so the derived vectors run through our CLI."""
    names = {"--ovmf": "--firmware", "--append": "--cmdline", "--kernel": "--kernel", "--initrd": "--initrd",
             "--vcpus": "--vcpus", "--vcpu-type": "--vcpu-type", "--guest-features": "--guest-features"}
    args, fms, i = [], {}, 0
    while i < len(cli_args):
        flag, value = cli_args[i], cli_args[i + 1]
        i += 2
        if flag in names:
            is_path = flag in ("--ovmf", "--kernel", "--initrd")
            args += [names[flag], str(vector(f"measurement/{value}")) if is_path else value]
        elif flag.startswith("--vcpu-") and flag[7:] in ("family", "model", "stepping"):
            fms[flag[7:]] = int(value)
    if fms:
        args += ["--vcpu-sig", hex(measure.cpu_signature(fms["family"], fms["model"], fms["stepping"]))]
    return args


@pytest.mark.parametrize("case", derived_cases())
def test_derived_vectors_through_the_cli(case, capsys):
    args = case["cli_args"]
    mode = args[args.index("--mode") + 1]
    ours = to_snpvirt_args(args)
    if mode == "snp:ovmf-hash":
        ours += ["--vcpus", "1", "--vcpu-type", "EPYC"]
    assert run(["measure", *ours, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["results"][0]
    value = doc["inputs"]["ovmf_hash"] if mode == "snp:ovmf-hash" else doc["measurement"]
    if "--output-format" in args:
        value = base64.b64encode(bytes.fromhex(value)).decode()
    assert value == case["expected"]


def extra_vectors():
    """60 more sev-snp-measure vectors over CPU models, vCPU counts, features, with and without a kernel."""
    rows = json.loads(vector("measurement/extra-vectors.json").read_text())["cases"]
    assert len(rows) == 30
    return [pytest.param(row["vcpu_type"], row["vcpus"], int(row["guest_features"], 16), kernel, row[key],
                         id=f"{row['vcpu_type']}-{row['vcpus']}-{row['guest_features']}-{'kernel' if kernel else 'none'}")
            for row in rows for kernel, key in ((False, "no_kernel"), (True, "kernel"))]


@pytest.mark.parametrize("model,vcpus,features,with_kernel,expected", extra_vectors())
def test_extra_vectors(tmp_path, model, vcpus, features, with_kernel, expected):
    firmware = str(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"))
    kernel = initrd = cmdline = None
    if with_kernel:
        kernel, initrd = tmp_path / "k", tmp_path / "i"
        kernel.write_bytes(b"K" * 4096)
        initrd.write_bytes(b"I" * 1000)
        kernel, initrd, cmdline = str(kernel), str(initrd), "console=ttyS0 root=/dev/vda"
    result = launch.measure_files(firmware, vcpus=vcpus, signature=measure.vcpu_signature(model),
                                  guest_features=features, kernel=kernel, initrd=initrd, cmdline=cmdline)
    assert result.value == expected


def test_cpu_signatures():
    for entry in json.loads(vector("measurement/expected-upstream.json").read_text())["cpu_signatures"]:
        assert measure.cpu_signature(entry["family"], entry["model"], entry["stepping"]) == entry["sig"]
    assert {m: measure.vcpu_signature(m) for m in ("EPYC-v4", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin")} == {
        "EPYC-v4": 0x800F12, "EPYC-Rome": 0x830F10, "EPYC-Milan": 0xA00F11, "EPYC-Genoa": 0xA10F10, "EPYC-Turin": 0xB00F00}


def test_debug_values_of_docs_measurement():
    """The intermediate digests docs/measurement.md gives for debugging: page, hash table, VMSA pages."""
    image = vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes()
    page_digest = hashlib.sha384(image).hexdigest()
    assert page_digest.startswith("161ace084859674d")
    hashes = measure.KernelHashes.of(hashlib.sha256(b"").digest(), None, "console=ttyS0 loglevel=7")
    table = hashes.table()
    assert len(table) == 176 and table[:18].hex() == "06d63894224fc94cb479a793d411fd21a800"
    page = bytearray(4096)
    page[0xC00:0xC00 + 176] = table
    assert hashlib.sha384(page).hexdigest().startswith("adbef9bc7385f7a6")
    bsp = measure.vmsa_page(0xFFFF0000, 0xFFF0, 0x800F12, 0x1)
    ap = measure.vmsa_page(0x00800000, 0xB004, 0x800F12, 0x1)
    assert hashlib.sha384(bsp).hexdigest().startswith("77920c4c629ff47e")
    assert hashlib.sha384(ap).hexdigest().startswith("8413b852790765a3")
    assert hashlib.sha384(measure.vmsa_page(0xFFFF0000, 0xFFF0, 0xB00F00, 0x21)).hexdigest().startswith("3e58103ac68fdac8")


def test_firmware_problems_are_clear(tmp_path):
    not_ovmf = tmp_path / "OVMF_CODE.fd"
    not_ovmf.write_bytes(bytes(8192))
    with pytest.raises(BadInputError, match="not an SEV-capable OVMF build.*AmdSev build, e.g. OVMF.amdsev.fd"):
        measure.measure(not_ovmf.read_bytes(), vcpus=1, signature=0x800F12)
    with pytest.raises(BadInputError, match=r"firmware .*/nope\.fd: not found on this machine"):
        launch.measure_files(str(tmp_path / "nope.fd"), vcpus=1, signature=0x800F12, guest_features=1)
    with pytest.raises(BadInputError, match="vCPU type 'EPYC-Foo' is not a QEMU EPYC model snpvirt can measure") as info:
        measure.vcpu_signature("EPYC-Foo")
    assert "EPYC-Genoa" in info.value.hint
    with pytest.raises(BadInputError, match="host-passthrough") as info:
        measure.vcpu_signature("host-passthrough")
    assert "--vcpu-sig" in info.value.hint


def test_guest_features_change_the_digest():
    image = vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes()
    one = measure.measure(image, vcpus=2, signature=0x800F12, guest_features=0x1).hex
    debug_swap = measure.measure(image, vcpus=2, signature=0x800F12, guest_features=0x21).hex
    assert one != debug_swap


def test_metadata_order_is_followed_not_hard_coded():
    """Swap two SEV metadata descriptors in the image: the digest must change (the table order is measured)."""
    from snpvirt import ovmf
    image = bytearray(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes())
    parsed = ovmf.parse(bytes(image))
    offset = len(image) - int.from_bytes(parsed.footer_entries[ovmf.SEV_METADATA_GUID][:4], "little") + 16
    first, second = image[offset:offset + 12], image[offset + 12:offset + 24]
    image[offset:offset + 12], image[offset + 12:offset + 24] = second, first
    assert [s.gpa for s in ovmf.parse(bytes(image)).sev_sections][:2] == [0x80A000, 0x800000]
    original = measure.measure(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin").read_bytes(), vcpus=1, signature=0x800F12)
    swapped = measure.measure(bytes(image), vcpus=1, signature=0x800F12)
    assert original.hex != swapped.hex


def test_cli_usage_errors(capsys):
    assert run(["measure", "--vcpus", "1"]) == 2
    assert "--firmware, --vcpus and --vcpu-type" in capsys.readouterr().err
    assert run(["measure", "--firmware", "/x", "--vcpus", "1", "--vcpu-type", "EPYC", "--initrd", "/y"]) == 2
    assert "--initrd and --cmdline need --kernel" in capsys.readouterr().err


def test_guest_features_from_host_facts():
    assert launch.host_guest_features("6.12.0-amd64", "Y")[0] == 0x1
    assert launch.host_guest_features("6.8.0-snp", "Y") == (0x21, "host kernel 6.8.0-snp with kvm_amd debug_swap=Y (SNPActive + DebugSwap)")
    assert launch.host_guest_features("6.8.0-snp", "N") is None and launch.host_guest_features(None, "Y") is None


def test_measure_json_names_where_guest_features_came_from(capsys):
    fw = str(vector("measurement/ovmf/ovmf_AmdSev_suffix.bin"))
    assert run(["measure", "--firmware", fw, "--vcpus", "1", "--vcpu-type", "EPYC", "--json"]) == 0
    inputs = json.loads(capsys.readouterr().out)["results"][0]["inputs"]
    assert (inputs["guest_features"], inputs["guest_features_source"]) == ("0x1", "default (upstream KVM)")
    assert run(["measure", "--firmware", fw, "--vcpus", "1", "--vcpu-type", "EPYC", "--guest-features", "0x21",
                "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["results"][0]
    assert doc["measurement"] == "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"
    assert doc["inputs"]["firmware"]["sha256"] == "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c"
