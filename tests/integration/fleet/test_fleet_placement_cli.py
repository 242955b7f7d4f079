"""`snpvirt fleet` end to end on four isolated libvirtd hosts (real daemons, the real CLI as a process):
placement, the second plan that changes nothing, capacity taken by foreign SNP domains, domains that stay."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_cli
from tests.integration.fleet.conftest import write_fleet, write_spec

pytestmark = pytest.mark.daemon

FOREIGN_SNP = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os>
<launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity></domain>"""


def fleet_json(*args: str) -> tuple[int, dict]:
    proc = run_cli("fleet", *args, "--json")
    assert proc.stdout, proc.stderr
    return proc.code, json.loads(proc.stdout)


def placed(doc: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in doc["results"]:
        if item["host"]:
            out.setdefault(item["host"], []).append(item["name"])
    return {host: sorted(names) for host, names in out.items()}


def test_five_domains_go_2_2_1_and_a_second_plan_is_all_unchanged(hosts, tmp_path):
    three = [hosts["h1"], hosts["h2"], hosts["h3"]]
    fleet = write_fleet(tmp_path, three, f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 5\n')
    code, plan = fleet_json("plan", str(fleet))
    assert code == 0, plan
    assert {i["action"] for i in plan["results"]} == {"create"}
    assert sorted(len(v) for v in placed(plan).values()) == [1, 2, 2]
    code, applied = fleet_json("apply", str(fleet))
    assert code == 0, applied
    assert placed(applied) == placed(plan)
    for host in three:
        assert host.running() == placed(plan).get(host.name, [])
    code, again = fleet_json("plan", str(fleet))
    assert code == 0 and {i["action"] for i in again["results"]} == {"unchanged"}, again
    assert again["changed"] is False


def test_a_foreign_snp_domain_uses_a_slot(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    h1.held.createXML(FOREIGN_SNP.format(name="someone-elses"), 0)
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 3\n')
    code, check = fleet_json("check", str(fleet))
    assert code == 0, check
    slots = {r["name"]: (r["slots_used"], r["slots_free"]) for r in check["results"]}
    assert slots == {"h1": (1, 1), "h2": (0, 2)}
    code, plan = fleet_json("plan", str(fleet))
    # db-1 to h2 (2 free slots against 1); then 1 and 1, and h1 has more free memory: db-2; db-3 to h2.
    assert placed(plan) == {"h1": ["db-2"], "h2": ["db-1", "db-3"]}, plan


def test_a_domain_stays_on_its_host_although_another_has_more_room(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    spec = write_spec(tmp_path, "db")
    fleet = write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\n', slots=2)
    assert fleet_json("apply", str(fleet))[0] == 0
    assert h1.running() == ["db"]
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{spec}"\n', slots=2,
                        host_extra={"h2": ""})  # h2: 2 free slots, h1: 1
    code, plan = fleet_json("plan", str(fleet))
    assert code == 0 and placed(plan) == {"h1": ["db"]} and plan["results"][0]["action"] == "unchanged", plan


def test_orphans_are_listed_and_only_prune_removes_them(hosts, tmp_path):
    h1 = hosts["h1"]
    spec = write_spec(tmp_path, "db")
    assert fleet_json("apply", str(write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\ncount = 2\n')))[0] == 0
    fleet = write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\ncount = 1\n')
    code, plan = fleet_json("plan", str(fleet))
    assert code == 0 and {i["name"]: i["action"] for i in plan["results"]} == {"db-1": "unchanged", "db-2": "orphaned"}
    assert fleet_json("apply", str(fleet))[0] == 0 and h1.names() == ["db-1", "db-2"]  # left alone
    code, pruned = fleet_json("apply", str(fleet), "--prune")
    assert code == 0 and h1.names() == ["db-1"], pruned
    assert next(i for i in pruned["results"] if i["name"] == "db-2")["action"] == "prune"


def test_a_domain_on_two_hosts_is_flagged_and_left_alone(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    spec = write_spec(tmp_path, "db")
    for host in (h1, h2):  # a fleet file that named one host, then the other: a copy on each
        (tmp_path / host.name).mkdir()
        write_spec(tmp_path / host.name, "db")
        assert fleet_json("apply", str(write_fleet(tmp_path / host.name, [host], '[[domains]]\nspec = "vms/db.toml"\n')))[0] == 0
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{spec}"\n')
    proc = run_cli("fleet", "list", str(fleet))
    assert proc.code == 0 and proc.stdout.count("DUPLICATE") == 2 and "db is defined on 2 hosts" in proc.stderr, proc
    code, plan = fleet_json("plan", str(fleet))
    assert sorted(i["action"] for i in plan["results"]) == ["duplicate", "unchanged"], plan


def test_json_keeps_stderr_free_of_progress_and_people_get_it(hosts, tmp_path):
    fleet = write_fleet(tmp_path, [hosts["h1"]], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\n')
    quiet = run_cli("fleet", "plan", str(fleet), "--json")
    assert quiet.code == 0 and quiet.stderr == "", quiet.stderr
    loud = run_cli("fleet", "plan", str(fleet))
    assert loud.code == 0 and "snpvirt: h1: connecting" in loud.stderr and "create" in loud.stdout, loud


CAPTURED = ROOT / "examples" / "captured-host"


def test_each_host_has_its_own_readiness_gate(hosts, tmp_path):
    """On the test driver the gate judges a captured host when the fleet file names one, as --sysroot does:
    h1 is a ready SEV-SNP host (its maxESGuests gives the slots), h2 is not (no SEV in its capabilities)."""
    h1, h2 = hosts["h1"], hosts["h2"]
    db, pinned = write_spec(tmp_path, "db"), write_spec(tmp_path, "pinned")
    ready = f'sysroot = "{CAPTURED}"\nhost_caps = "{CAPTURED / "domcaps.xml"}"\n'
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{db}"\ncount = 2\n\n'
                        f'[[domains]]\nspec = "{pinned}"\nhost = "h2"\n', slots=None,
                        host_extra={"h1": ready, "h2": f'sysroot = "{CAPTURED}"\n'})
    code, check = fleet_json("check", str(fleet))
    by_host = {r["name"]: r for r in check["results"]}
    assert by_host["h1"]["ready"] is True and by_host["h1"]["slots_source"] == "domcaps maxESGuests", by_host["h1"]
    assert by_host["h2"]["ready"] is False and by_host["h2"]["error"]["kind"] == "not_ready" and code == 9
    # maxESGuests overstates SNP capacity under ciphertext hiding: said, with snp_guests as the way out
    hiding = [w for w in check["warnings"] if w["id"] == "capacity.ciphertext_hiding"]
    assert [w["message"].split(":")[0] for w in hiding] == ["h1"] and "snp_guests" in hiding[0]["hint"]
    code, plan = fleet_json("plan", str(fleet))
    assert placed(plan) == {"h1": ["db-1", "db-2"]}, plan
    refused = next(i for i in plan["results"] if i["name"] == "pinned")
    assert refused["action"] == "unplaceable" and "not ready" in refused["reason"]
    # A domain already on h2 (defined while the gate did not apply) is not changed there either.
    assert fleet_json("apply", str(write_fleet(tmp_path / "vms", [h2], '[[domains]]\nspec = "pinned.toml"\n')))[0] == 0
    write_spec(tmp_path, "pinned", memory=384)  # the spec changes: an update is due on h2
    code, plan = fleet_json("apply", str(fleet))
    item = next(i for i in plan["results"] if i["name"] == "pinned")
    assert (item["action"], item["error"]["kind"]) == ("not_ready", "not_ready"), item
    assert code == 9 and h1.running() == ["db-1", "db-2"]
