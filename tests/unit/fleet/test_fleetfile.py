"""The fleet file is checked like a spec: one clear error per problem, naming the dotted key."""

from __future__ import annotations

import pytest

from snpvirt.errors import BadInputError
from snpvirt.fleet.fleetfile import load_fleet

SPEC = """name = "db"\nmemory_mib = 512\nvcpus = 1\nfirmware = "/usr/share/ovmf/OVMF.amdsev.fd"\n"""
GOOD = """\
[fleet]
name = "prod"

[[hosts]]
name = "h1"
uri = "qemu+ssh://root@h1/system"
labels = { rack = "r1" }

[[domains]]
spec = "vms/db.toml"
count = 3
state = "shutoff"
"""


def fleet_file(tmp_path, text=GOOD):
    (tmp_path / "vms").mkdir(exist_ok=True)
    (tmp_path / "vms" / "db.toml").write_text(SPEC)
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_count_expands_names_relative_specs_and_owns_them(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # the spec path is relative to the fleet file, not to the working folder
    fleet = load_fleet(fleet_file(tmp_path))
    assert [d.name for d in fleet.domains] == ["db-1", "db-2", "db-3"]
    assert all(d.spec.fleet == "prod" and d.spec.state == "shutoff" for d in fleet.domains)
    assert fleet.domains[1].spec.source["name"] == "db-2"  # each copy has its own recorded spec
    assert fleet.settings.parallel_hosts == 8 and fleet.settings.per_host == 2 and fleet.settings.connect_timeout_s == 15


@pytest.mark.parametrize("change, named", [
    (("count = 3", "count = 3\ncolour = 1"), "unknown key 'domains[0].colour'"),
    (("count = 3", 'count = "3"'), "domains[0].count: expected an integer"),
    (('name = "prod"', 'name = "prod"\nparallel_hosts = 0'), "fleet.parallel_hosts: 0 is out of range"),
    (('labels = { rack = "r1" }', "labels = { rack = 1 }"), "hosts[0].labels.rack: expected a string"),
    (("count = 3", 'count = 3\nhost = "h9"'), "domains[0].host: no host named 'h9'"),
    (('uri = "qemu+ssh://root@h1/system"\n', ""), "missing required key 'hosts[0].uri'"),
    (('spec = "vms/db.toml"', 'spec = "vms/none.toml"'), "domains[0].spec vms/none.toml"),
    (('[fleet]\nname = "prod"\n', '[fleet]\n'), "missing required key 'fleet.name'"),
    (("root@h1", "root:hunter2@h1"), "hosts[0].uri: the URI holds a password"),
    (('name = "prod"', 'name = "prod"\nconnect_timeout_s = nan'), "fleet.connect_timeout_s: nan is out of range"),
    # Past 4300 decimal digits str() of an int raises: the message gives the number's size instead.
    (('name = "prod"', 'name = "prod"\nconnect_timeout_s = 0x' + "f" * 4000),
     "fleet.connect_timeout_s: a 16000-bit number is out of range"),
    (('name = "prod"', 'name = "prod"\nper_host = 0x' + "f" * 4000), "fleet.per_host: a 16000-bit number is out of range"),
])
def test_one_clear_error_naming_the_key(tmp_path, change, named):
    with pytest.raises(BadInputError) as caught:
        load_fleet(fleet_file(tmp_path, GOOD.replace(*change)))
    assert named in caught.value.message and caught.value.hint
    assert "hunter2" not in caught.value.message + caught.value.hint  # a secret is never repeated


def test_two_entries_making_one_name_is_an_error(tmp_path):
    text = GOOD + '\n[[domains]]\nspec = "vms/db.toml"\ncount = 1\n'
    with pytest.raises(BadInputError, match="two domains named db-1"):
        load_fleet(fleet_file(tmp_path, text))


def test_one_libvirt_host_listed_twice_is_an_error(tmp_path):
    """Its capacity would count twice, and one domain could be placed on it under each name."""
    text = GOOD.replace("[[domains]]", '[[hosts]]\nname = "h1-again"\nuri = "qemu+ssh://root@h1/system"\n\n[[domains]]')
    with pytest.raises(BadInputError) as caught:
        load_fleet(fleet_file(tmp_path, text))
    assert "h1 and h1-again have the same uri" in caught.value.message and caught.value.hint


@pytest.mark.parametrize("uri", ["test+ext:///default?command={script}",
                                 "qemu+ssh://root@h1/system?command={script}",
                                 "qemu+ssh://root@h1/system?no_tty=1&Command={script}",
                                 # libvirt's C code reads an unescaped name up to its NUL: both are `command` to it
                                 "qemu+ssh://root@h1/system?command%00x={script}",
                                 "qemu+ssh://root@h1/system?no_tty=1;COMMAND%00={script}"])
def test_a_fleet_file_never_runs_a_local_program(tmp_path, uri):
    """libvirt runs the program a URI's `command` names (the ext transport, or in place of ssh): a fleet file
    is data, shared like a spec, and `fleet check` of it must not run anything on this machine."""
    from tests.conftest import run_cli

    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    path = fleet_file(tmp_path, GOOD.replace("qemu+ssh://root@h1/system", uri.format(script=script))
                      .replace("count = 3", "count = 1"))
    proc = run_cli("fleet", "check", str(path), "--json")
    assert not marker.exists(), "the fleet file ran a program"
    assert proc.code == 2 and "hosts[0].uri" in proc.stderr + proc.stdout, proc.stderr + proc.stdout


def test_the_fleet_as_a_whole_has_a_bound(tmp_path, monkeypatch):
    """`count` is bounded per entry; a file of many entries must not expand into millions of domains
    (a 1 MiB fleet file could name 30,000 entries of 1,000 copies): refused before they are made."""
    from snpvirt.fleet import fleetfile

    monkeypatch.setattr(fleetfile, "MAX_DOMAINS", 5)  # the bound's logic, without making 50,000 specs
    path = fleet_file(tmp_path, GOOD + '\n[[domains]]\nspec = "vms/db2.toml"\ncount = 3\n')
    (tmp_path / "vms" / "db2.toml").write_text(SPEC.replace('"db"', '"db2"'))
    with pytest.raises(BadInputError, match="more than 5 domains"):
        load_fleet(path)


@pytest.mark.parametrize("content", ["[" * 60_000, '{"fleet": "prod"}', "not json"])
def test_a_plan_file_that_is_not_a_plan_is_one_error_line(tmp_path, content):
    """--plan is read before any host is asked: JSON nested past the recursion limit is bad input too."""
    from tests.conftest import run_cli

    plan = tmp_path / "plan.json"
    plan.write_text(content)
    proc = run_cli("fleet", "apply", str(fleet_file(tmp_path)), "--plan", str(plan))
    assert proc.code == 2 and proc.stderr.count("snpvirt: error:") == 1, proc.stderr
    assert "not a fleet plan" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("uri, skips", [
    ("qemu+tls://h1/system?no_verify=1", "no_verify=1"),
    ("qemu+ssh://root@h1/system?keyfile=k&No_Verify=1", "no_verify=1"),  # libvirt reads names without case
    ("qemu+ssh://root@h1/system?no_verify%00x=1", "no_verify=1"),  # and up to a NUL (ssh ran with StrictHostKeyChecking=no)
    ("qemu+libssh2://root@h1/system?known_hosts_verify=ignore", "known_hosts_verify=ignore"),  # libssh's own parameter
    ("qemu+libssh://root@h1/system?known_hosts_verify=normal", None),
    ("qemu+tls://h1/system?no_verify=0", None),
    ("qemu+tls://h1/system", None),
])
def test_a_host_whose_identity_libvirt_does_not_check_is_warned_about(tmp_path, uri, skips):
    """no_verify=1 lets anyone between here and the host pose as it: every fleet command says so, reached or not."""
    from snpvirt.errors import ConnectionFailedError
    from snpvirt.fleet.hosts import reach_all

    def unreachable(entry):
        raise ConnectionFailedError(f"cannot reach {entry.uri}", "start it")

    fleet = load_fleet(fleet_file(tmp_path, GOOD.replace("qemu+ssh://root@h1/system", uri)))
    [session] = reach_all(fleet, unreachable, lambda host, what: None)
    warned = [w for w in session.view.warnings if w["id"] == "uri.no_verify"]
    assert bool(warned) == bool(skips)
    if skips:
        assert f"h1: its uri says {skips}:" in warned[0]["message"]
        assert f"drop {skips.partition('=')[0]} from" in warned[0]["hint"]
