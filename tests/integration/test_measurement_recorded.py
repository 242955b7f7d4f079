"""The expected measurement travels with the domain: recorded at define, shown by list/status, filled later."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from lxml import etree

from snpvirt.domain import sevparams
from snpvirt.launch import inputs as launch
from snpvirt.domain import spec as specs
from snpvirt.cli.app import run
from snpvirt.host import readiness
from snpvirt.libvirt import storage
from snpvirt.libvirt.connection import Connection
from snpvirt.errors import ConflictError, ExitCode
from snpvirt.manager import Manager, SpecInput
from tests.conftest import vector
from tests.integration.test_manager import make_manager
from tests.integration.test_manager_drift import edit_outside

FW = "measurement/ovmf/ovmf_AmdSev_suffix.bin"


@pytest.fixture
def files(tmp_path):
    """Launch files readable here: the AmdSev firmware fixture and the derived kernel and initrd."""
    paths = {"firmware": tmp_path / "OVMF.amdsev.fd", "kernel": tmp_path / "vmlinuz", "initrd": tmp_path / "initrd.img"}
    for key, source in (("firmware", FW), ("kernel", "measurement/derived-inputs/kernel.bin"),
                        ("initrd", "measurement/derived-inputs/initrd.bin")):
        paths[key].write_bytes(vector(source).read_bytes())
    return {k: str(v) for k, v in paths.items()}


def spec_file(tmp_path, name, files, **snp):
    extra = "".join(f'{k} = "{v}"\n' for k, v in snp.items())
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nmemory_mib = 2048\nvcpus = 4\ncpu_model = "EPYC-Genoa"\n'
                    f'firmware = "{files["firmware"]}"\n[boot]\nkernel = "{files["kernel"]}"\n'
                    f'initrd = "{files["initrd"]}"\ncmdline = "console=ttyS0 root=/dev/vda1"\n'
                    f'[snp]\ncbitpos = 51\nreduced_phys_bits = 1\n{extra}')
    return path


@pytest.fixture
def mgr(clean_test_driver):
    with Connection("test:///default") as conn:
        yield make_manager(conn)


def test_define_records_the_expected_measurement_and_digests(mgr, files, tmp_path, capsys):
    path = spec_file(tmp_path, "meas-01", files)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    status = mgr.status("meas-01")
    assert run(["measure", str(path)]) == 0
    measured = capsys.readouterr().out.strip()
    # The same inputs as the derived vector "snp, EPYC-Genoa, 4 vcpus, kernel+initrd+cmdline, guest-features 0x1".
    assert measured.startswith("fb544c79596018c1")
    assert status["expected_measurement"] == measured
    assert status["launch"]["measurement"]["vcpu_signature"] == "0xa10f10"
    assert status["launch"]["kernel"]["sha256"] == "c8f5d0341d54d951a71b136e6e2afcb14d11ed8489a7ae126a8fee0df6ecf193"
    assert [r["expected_measurement"] for r in mgr.list() if r["name"] == "meas-01"] == [measured]


def test_id_key_in_the_spec_embeds_signed_blocks_and_only_public_digests(mgr, files, tmp_path):
    id_key = vector("measurement/idblock-virtee-sev/test_id_key.pem")
    author = vector("measurement/idblock-virtee-sev/test_auth_key.pem")
    path = spec_file(tmp_path, "meas-02", files, id_key=id_key, author_key=author, image_id="01" * 16)
    vm = specs.load_spec(path)
    record = launch.record(vm)
    from snpvirt.domain import render
    xml = render.render(vm, sevparams.resolve(vm, []), launch=record).xml
    root = etree.fromstring(xml.encode())
    ls = root.find("launchSecurity")
    block = base64.b64decode(ls.findtext("idBlock"))
    assert ls.get("authorKey") == "yes" and len(base64.b64decode(ls.findtext("idAuth"))) == 4096
    assert block[:48].hex() == record.expected.value and block[0x40:0x50] == bytes.fromhex("01" * 16)
    assert "PRIVATE KEY" not in xml and id_key.read_text().splitlines()[1] not in xml
    ns = {"s": "https://snpvirt.dev/xmlns/domain/1"}
    digests = root.find("metadata/s:domain/s:launch/s:id_block", ns)
    assert digests.get("id_key_digest") == "WfssaG36T+9J84M5qndckAUcKNVzg93DuvO160sUlt87DbvcuuX+J2d6ZEggdz/i"
    mgr.apply([SpecInput(str(path), vm)])
    assert mgr.status("meas-02")["expected_measurement"] == record.expected.value


def test_id_key_without_readable_files_is_a_clear_error(tmp_path, capsys):
    files = {"firmware": "/nonexistent/OVMF.fd", "kernel": "/nonexistent/vmlinuz", "initrd": "/nonexistent/initrd"}
    path = spec_file(tmp_path, "meas-03", files, id_key=vector("measurement/idblock-virtee-sev/test_id_key.pem"))
    assert run(["render", str(path)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "snp.id_key needs the expected measurement, which is unknown" in err and "/nonexistent/vmlinuz" in err


def test_unknown_then_recorded_from_local_copies(mgr, files, tmp_path, capsys):
    remote = {"firmware": "/srv/remote/OVMF.amdsev.fd", "kernel": "/srv/remote/vmlinuz", "initrd": "/srv/remote/initrd.img"}
    path = spec_file(tmp_path, "meas-04", remote)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    status = mgr.status("meas-04")
    assert status["expected_measurement"] is None
    assert status["launch"]["measurement"] == {"status": "unknown", "guest_features": "0x1",
                                               "reason": "kernel /srv/remote/vmlinuz: not found on this machine"}
    copies = ["--set", f"firmware={files['firmware']}", "--set", f"boot.kernel={files['kernel']}",
              "--set", f"boot.initrd={files['initrd']}"]
    assert run(["measure", str(path), *copies, "--record", "meas-04", "-c", "test:///default", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] is True and doc["results"][0]["recorded"] == {"domain": "meas-04", "changed": True}
    assert mgr.status("meas-04")["expected_measurement"] == doc["results"][0]["measurement"]
    assert run(["measure", str(path), *copies, "--record", "meas-04", "-c", "test:///default", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False


@pytest.mark.parametrize("override,mismatch", [
    ("vcpus=2", "vCPUs: domain '4', spec '2'"),
    ("cpu_model=EPYC-Milan", "vCPU model: domain 'EPYC-Genoa', spec 'EPYC-Milan'"),
    ("boot.cmdline=console=ttyS0", "cmdline: domain 'console=ttyS0 root=/dev/vda1', spec 'console=ttyS0'"),
    ("snp.kernel_hashes=false", "kernel hashes: domain True, spec False"),
])
def test_record_refuses_a_spec_the_domain_was_not_launched_with(mgr, files, tmp_path, capsys, override, mismatch):
    """Each launch input the measurement depends on must match the domain's, or the recorded value would be
    one this domain can never produce (and attestation would fail, or pass for the wrong guest)."""
    remote = {"firmware": "/srv/remote/OVMF.amdsev.fd", "kernel": "/srv/remote/vmlinuz", "initrd": "/srv/remote/initrd.img"}
    path = spec_file(tmp_path, "meas-05", remote)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    before = mgr.status("meas-05")["launch"]
    copies = ["--set", f"firmware={files['firmware']}", "--set", f"boot.kernel={files['kernel']}",
              "--set", f"boot.initrd={files['initrd']}"]
    code = run(["measure", str(path), *copies, "--set", override, "--record", "meas-05", "-c", "test:///default"])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFLICT and mismatch in err, err
    assert mgr.status("meas-05")["launch"] == before, "nothing recorded"


def test_a_kernel_without_hashes_is_measured_without_it_and_still_recorded(mgr, files, tmp_path):
    path = spec_file(tmp_path, "meas-06", files, kernel_hashes="false")
    path.write_text(path.read_text().replace('kernel_hashes = "false"', "kernel_hashes = false"))
    mgr.apply([SpecInput(str(path), specs.load_spec(path))])
    status = mgr.status("meas-06")
    assert status["kernel_hashes"] is False and status["launch"]["kernel"]["sha256"]  # digest kept in the record
    # Measured as the firmware alone: the reference's no-kernel Genoa 4-vCPU vector.
    assert status["expected_measurement"].startswith("7f8dbe5139660d9d")


# --- signed ID blocks after define: compared where they can be made, never refused for lack of the files ---


def id_key_spec(tmp_path, name, files, author=True):
    author_key = {"author_key": vector("measurement/idblock-virtee-sev/test_auth_key.pem")} if author else {}
    return spec_file(tmp_path, name, files, id_key=vector("measurement/idblock-virtee-sev/test_id_key.pem"),
                     image_id="01" * 16, **author_key)


def test_a_domain_with_signed_id_blocks_is_unchanged_and_starts(mgr, files, tmp_path):
    """apply compares the blocks it signs again (a fresh signature is no change); start has no launch files to
    sign with, so the definition's own blocks are not compared: neither refuses an untouched domain."""
    path = id_key_spec(tmp_path, "meas-07", files)
    assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)[0].ok
    again = mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)[0]
    assert (again.ok, again.action, again.changed, again.details["diff"]) == (True, "unchanged", False, [])
    assert mgr.start("meas-07").changed is True
    with Connection("test:///default") as conn:
        assert conn.state("meas-07") == "running"


@pytest.mark.parametrize("variant", ["family id and guest SVN", "no image id"])
def test_signed_blocks_of_every_id_block_field_start_as_recorded(mgr, files, tmp_path, variant):
    """Start rebuilds the ID block from the spec and the recorded measurement to know the definition's blocks
    are snpvirt's: every field the spec puts in it (family id, image id or none, guest SVN) must go in as
    signed, or an untouched domain could never start."""
    key = vector("measurement/idblock-virtee-sev/test_id_key.pem")
    author = vector("measurement/idblock-virtee-sev/test_auth_key.pem")
    if variant == "no image id":
        path = spec_file(tmp_path, "meas-22", files, id_key=key, author_key=author)
    else:
        path = spec_file(tmp_path, "meas-22", files, id_key=key, author_key=author, image_id="01" * 16, family_id="02" * 16)
        path.write_text(path.read_text() + "guest_svn = 3\n")
    assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)[0].ok
    assert mgr.start("meas-22").changed is True
    with Connection("test:///default") as conn:
        assert conn.state("meas-22") == "running"


def test_start_refuses_signed_blocks_carrying_another_author_key(mgr, files, tmp_path, clean_test_driver):
    """The ID key and the block are snpvirt's, but the author key in <idAuth> is another's: not what was signed."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from snpvirt.launch import idblock

    path = id_key_spec(tmp_path, "meas-23", files, author=True)
    vm = specs.load_spec(path)
    mgr.apply([SpecInput(str(path), vm)], start=False)
    measured = bytes.fromhex(mgr.status("meas-23")["expected_measurement"])
    key = idblock.load_private_key(vector("measurement/idblock-virtee-sev/test_id_key.pem"), "ID key")
    blocks = idblock.build(measured, vm.snp.policy, key, ec.generate_private_key(ec.SECP384R1()), image_id=bytes.fromhex("01" * 16))

    def swap_blocks(root):
        root.find("launchSecurity/idBlock").text = base64.b64encode(blocks.id_block).decode()
        root.find("launchSecurity/idAuth").text = base64.b64encode(blocks.id_auth).decode()
    edit_outside(clean_test_driver, "meas-23", swap_blocks)
    with pytest.raises(ConflictError, match=r"changed outside snpvirt"):
        mgr.start("meas-23")


def test_a_changed_kernel_file_is_an_update_that_signs_the_id_block_again(mgr, files, tmp_path):
    """The ID block holds the expected measurement: a kernel file changed since define makes the defined block
    one the firmware would refuse. One manager compares before and after (nothing remembered across)."""
    path = id_key_spec(tmp_path, "meas-08", files)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)
    # start=False: only the comparisons of the two plans, nothing else compared in between.
    assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], check=True, start=False)[0].action == "unchanged"
    with open(files["kernel"], "ab") as kernel:
        kernel.write(b"\0")
    plan = mgr.apply([SpecInput(str(path), specs.load_spec(path))], check=True, start=False)[0]
    assert plan.action == "update" and [c["key"] for c in plan.details["diff"]] == ["definition.launch_security.idBlock"]


def test_start_refuses_a_domain_whose_signed_id_blocks_were_removed(mgr, files, tmp_path, clean_test_driver):
    """Without its blocks the launch no longer enforces the spec's measurement: a change, though start cannot
    sign blocks itself to compare with."""
    path = id_key_spec(tmp_path, "meas-09", files, author=False)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)

    def remove_blocks(root):  # every SNP rule still passes: only the comparison sees it
        for tag in ("idBlock", "idAuth"):
            root.find("launchSecurity").remove(root.find(f"launchSecurity/{tag}"))
    edit_outside(clean_test_driver, "meas-09", remove_blocks)
    with pytest.raises(ConflictError) as refused:
        mgr.start("meas-09")
    assert ("(launch_security.idAuth: None, snpvirt defined \"(an ID authentication block signed with the spec's id_key)\"; "
            "launch_security.idBlock: None, snpvirt defined \"(an ID block signed with the spec's id_key)\")") in refused.value.message


def test_recording_through_the_library_reports_each_domain_as_every_verb_does(mgr, files, tmp_path):
    """Manager.record_measurement is the library's `measure --record`: its outcome names the domain, the
    action and the domain's state, in the shape of every other verb's result (Outcome.as_dict)."""
    from snpvirt.domain.launchrecord import LaunchInputs

    remote = {"firmware": "/srv/remote/OVMF.amdsev.fd", "kernel": "/srv/remote/vmlinuz", "initrd": "/srv/remote/initrd.img"}
    path = spec_file(tmp_path, "meas-10", remote)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)
    local = specs.load_spec(path, [f"firmware={files['firmware']}", f"boot.kernel={files['kernel']}",
                                   f"boot.initrd={files['initrd']}"])
    expected = launch.record(local).expected
    first = mgr.record_measurement("meas-10", LaunchInputs.of_spec(local), expected)
    assert first.as_dict() == {"name": "meas-10", "ok": True, "changed": True, "action": "record", "state": "shutoff"}
    again = mgr.record_measurement("meas-10", LaunchInputs.of_spec(local), expected)
    assert again.as_dict() == {"name": "meas-10", "ok": True, "changed": False, "action": "record", "state": "shutoff"}
    assert mgr.status("meas-10")["expected_measurement"] == expected.value


class VolumesServedHere(storage.Storage):
    """The test driver's storage: its volumes hold no bytes (it has no streams), so a volume's download gives
    the bytes `served` holds for it, as a remote host's volume arrives (a daemon's real streams:
    tests/integration/test_apply_volumes.py)."""

    def __init__(self, conn, served):
        super().__init__(conn)
        self.served = served

    def download(self, pool, name, dest, max_bytes, progress=None):
        Path(dest).write_bytes(self.served[name])
        return len(self.served[name])


def test_a_kernel_volume_changed_on_the_host_is_an_update_that_signs_the_id_block_again(files, tmp_path, clean_test_driver):
    """A kernel in a pool volume has no path readable here: its digest is the volume's bytes, read through
    libvirt. The ID block signed at define holds the measurement of those bytes; new bytes in the volume make
    it one the firmware would refuse, so apply re-signs it (an update), and only then."""
    volume = clean_test_driver.storagePoolLookupByName("default-pool").createXML(
        "<volume><name>meas-vmlinuz</name><capacity>1048576</capacity><target><format type='raw'/></target></volume>")
    try:
        path = id_key_spec(tmp_path, "meas-11", files)
        path.write_text(path.read_text().replace(f'kernel = "{files["kernel"]}"',
                                                 'kernel = { pool = "default-pool", volume = "meas-vmlinuz" }'))
        served = {"meas-vmlinuz": Path(files["kernel"]).read_bytes()}
        with Connection("test:///default") as conn:
            mgr = Manager(conn, gate=lambda: readiness.gate_report(conn), resolve_sev=lambda s: sevparams.resolve(s, []),
                          storage=VolumesServedHere(conn, served))
            assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)[0].ok
            assert mgr.status("meas-11")["launch"]["kernel"]["sha256"] == \
                "c8f5d0341d54d951a71b136e6e2afcb14d11ed8489a7ae126a8fee0df6ecf193"
            assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], check=True)[0].action == "unchanged"
            served["meas-vmlinuz"] += b"\0"
            plan = mgr.apply([SpecInput(str(path), specs.load_spec(path))], check=True)[0]
            assert plan.action == "update" and "definition.launch_security.idBlock" in [c["key"] for c in plan.details["diff"]]
    finally:
        volume.delete()


@pytest.mark.parametrize("swap, refused", [
    ("another ID key", True),  # another tool's own blocks for the same launch
    ("another measurement", True),  # the same key over another launch: an older kernel's block, a rollback
    ("another image id", True),  # what the report would show the verifier
    ("signed again alike", False),  # a fresh signature of the same block with the same key: no change
])
def test_start_refuses_a_domain_whose_signed_id_blocks_were_swapped(mgr, files, tmp_path, clean_test_driver,
                                                                     swap, refused):
    """Blocks another tool put in place of snpvirt's pass every SNP rule, and start has no launch files to sign
    with: the definition's own blocks stand in only when they are what snpvirt recorded (the ID block made
    from the recorded measurement and the spec, the recorded ID key)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from snpvirt.launch import idblock

    path = id_key_spec(tmp_path, "meas-20", files, author=False)
    vm = specs.load_spec(path)
    mgr.apply([SpecInput(str(path), vm)], start=False)
    measured = bytes.fromhex(mgr.status("meas-20")["expected_measurement"])
    key = idblock.load_private_key(vector("measurement/idblock-virtee-sev/test_id_key.pem"), "ID key")
    image_id = bytes.fromhex("01" * 16)
    blocks = {"another ID key": lambda: idblock.build(measured, vm.snp.policy, ec.generate_private_key(ec.SECP384R1()),
                                                      image_id=image_id),
              "another measurement": lambda: idblock.build(bytes(48), vm.snp.policy, key, image_id=image_id),
              "another image id": lambda: idblock.build(measured, vm.snp.policy, key),
              "signed again alike": lambda: idblock.build(measured, vm.snp.policy, key, image_id=image_id)}[swap]()

    def swap_blocks(root):
        root.find("launchSecurity/idBlock").text = base64.b64encode(blocks.id_block).decode()
        root.find("launchSecurity/idAuth").text = base64.b64encode(blocks.id_auth).decode()
    edit_outside(clean_test_driver, "meas-20", swap_blocks)
    if not refused:
        assert mgr.start("meas-20").changed is True
        return
    with pytest.raises(ConflictError, match=r"changed outside snpvirt \(launch_security\.id(Auth|Block): "):
        mgr.start("meas-20")
    with Connection("test:///default") as conn:
        assert conn.state("meas-20") == "shutoff"


def _launch_child(root, tag):
    ns = "{https://snpvirt.dev/xmlns/domain/1}"
    return root.find(f"metadata/{ns}domain/{ns}launch/{ns}{tag}")


@pytest.mark.parametrize("edit", ["measurement value not hex", "id_block record removed", "ID key digest not base64",
                                  "ID key digest with a stray character"])
def test_start_refuses_signed_blocks_when_snpvirts_own_record_of_them_was_mangled(mgr, files, tmp_path,
                                                                                   clean_test_driver, edit):
    """The definition's blocks stand in only when they match what snpvirt recorded; a record another tool
    mangled (or removed) cannot vouch for them: start refuses, whatever the blocks are."""
    path = id_key_spec(tmp_path, "meas-21", files, author=False)
    mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)

    def mangle(root):
        if edit == "measurement value not hex":
            _launch_child(root, "measurement").set("value", "not hex")
        elif edit == "id_block record removed":
            record = _launch_child(root, "id_block")
            record.getparent().remove(record)
        elif edit == "ID key digest not base64":
            _launch_child(root, "id_block").set("id_key_digest", "not base64!")
        else:  # the right digest, and a character base64 does not have: lenient decoding would still match
            record = _launch_child(root, "id_block")
            record.set("id_key_digest", record.get("id_key_digest") + "!")
    edit_outside(clean_test_driver, "meas-21", mangle)
    with pytest.raises(ConflictError, match=r"changed outside snpvirt \(launch_security\.id(Auth|Block): "):
        mgr.start("meas-21")
    with Connection("test:///default") as conn:
        assert conn.state("meas-21") == "shutoff"


def test_an_id_key_spec_is_signed_once_per_plan_and_its_blocks_stand_in_when_its_files_are_gone(mgr, files, tmp_path,
                                                                                              monkeypatch):
    """An update of a spec whose ID block snpvirt signs defines the blocks signed for it (measuring the launch
    files and signing once per plan, not again to render); where the files are no longer readable, the blocks
    the domain holds stand in for the ones that cannot be signed here: the plan shows no change."""
    keys = {"id_key": vector("measurement/idblock-virtee-sev/test_id_key.pem"),
            "author_key": vector("measurement/idblock-virtee-sev/test_auth_key.pem")}
    path = spec_file(tmp_path, "meas-10", files, **keys)
    assert mgr.apply([SpecInput(str(path), specs.load_spec(path))], start=False)[0].ok
    signed = []
    record = launch.record

    def counted(*args, **kwargs):
        signed.append(args[0].name)
        return record(*args, **kwargs)

    monkeypatch.setattr(launch, "record", counted)
    path.write_text(path.read_text().replace("memory_mib = 2048", "memory_mib = 4096"))
    updated = SpecInput(str(path), specs.load_spec(path))
    done = mgr.apply([updated], start=False)[0]
    assert (done.ok, done.action) == (True, "update") and mgr.status("meas-10")["memory_mib"] == 4096
    assert signed == ["meas-10"]
    for file in files.values():
        Path(file).unlink()
    plan = mgr.apply([updated], check=True, start=False)[0]
    assert (plan.ok, plan.action, plan.changed) == (True, "unchanged", False)
