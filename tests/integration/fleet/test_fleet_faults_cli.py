"""Faults a fleet run must survive, each on real isolated daemons through the real CLI: a host that is
down, a frozen daemon, a daemon killed in the middle of apply, two applies at once, a stale plan, and
--max-failures; pins and spread too."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.integration.fleet.conftest import write_fleet, write_spec
from tests.integration.fleet.test_fleet_placement_cli import fleet_json

pytestmark = pytest.mark.daemon


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snpvirt", "fleet", *args, "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_host_that_is_down_fails_at_once_and_its_domains_are_never_made_elsewhere(hosts, tmp_path):
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    fleet = write_fleet(tmp_path, [h1, h2, h3], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 3\n')
    assert fleet_json("apply", str(fleet))[0] == 0
    on_h3 = h3.names()
    assert on_h3  # one copy went there
    h3.kill()
    code, plan = fleet_json("plan", str(fleet))
    assert code == 9, plan
    unknown = [i["name"] for i in plan["results"] if i["action"] == "unknown"]
    assert unknown == on_h3  # not placed again on h1/h2: that would be a second copy when h3 returns
    down = [h for h in plan["hosts"] if h["name"] == "h3"][0]
    assert down["reachable"] is False and down["error"]["kind"] == "connection", down
    code, applied = fleet_json("apply", str(fleet))
    assert code == 9
    assert sorted(h1.names() + h2.names()) == sorted(set(["db-1", "db-2", "db-3"]) - set(on_h3))


def test_a_frozen_daemon_does_not_hang_the_run(hosts, tmp_path):
    """connect_timeout_s is 3 in the test fleets: the frozen host is given up, the others are applied."""
    h1, h2 = hosts["h1"], hosts["h2"]
    h2.freeze()
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 2\n'
                        'labels = {}\n')
    proc = spawn("apply", str(fleet))
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("fleet apply hung on a frozen daemon")
    doc = json.loads(out)
    assert proc.returncode == 9, doc
    frozen = [h for h in doc["hosts"] if h["name"] == "h2"][0]
    assert frozen["error"]["kind"] == "timeout" and "within 3 s" in frozen["error"]["message"], frozen
    # Both copies are 'unknown' (they may be on h2): nothing is created anywhere while it could duplicate.
    assert {i["action"] for i in doc["results"]} == {"unknown"}


def test_a_frozen_daemon_with_a_pin_elsewhere_lets_the_other_hosts_finish(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    h2.freeze()
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\nhost = "h1"\n')
    code, doc = fleet_json("apply", str(fleet))
    assert code == 9 and h1.running() == ["db"], doc
    assert [i["action"] for i in doc["results"]] == ["create"]


def _apply_40_until_h2_begins(h1, h2, tmp_path):
    """A `fleet apply` of 40 domains over h1 and h2, one operation at a time per host, caught once h2 has begun
    its 20: the moment to take h2 away mid-apply. Returns the fleet file and the running apply."""
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db", 128)}"\ncount = 40\n',
                        slots=40, settings="per_host = 1\n")
    proc = spawn("apply", str(fleet))
    deadline = time.monotonic() + 30
    while not h2.names() and time.monotonic() < deadline:
        time.sleep(0.005)
    return fleet, proc


def test_a_daemon_killed_mid_apply_then_a_rerun_converges(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    fleet, proc = _apply_40_until_h2_begins(h1, h2, tmp_path)
    h2.kill()
    out, _ = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert proc.returncode == 9, doc
    on_h1 = [i for i in doc["results"] if i["host"] == "h1"]
    assert len(on_h1) == 20 and all(i["ok"] for i in on_h1)  # the other host completed
    assert any(not i["ok"] for i in doc["results"] if i["host"] == "h2")  # the rest of h2's work: failed
    h2.revive()  # it comes back (the test driver forgets its domains: as if they were lost with it)
    code, again = fleet_json("apply", str(fleet))
    assert code == 0, again
    names = h1.names() + h2.names()
    assert sorted(names) == sorted(f"db-{n}" for n in range(1, 41))  # nothing duplicated, nothing lost
    assert len(h1.names()) == 20 and len(h1.running()) == 20  # h1's domains stayed where they were


def test_a_daemon_frozen_mid_apply_is_given_up_after_the_keepalive(hosts, tmp_path):
    """keepalive 1 s x 2 in the test fleets: h2's connection is closed, its remaining work fails, h1 finishes."""
    h1, h2 = hosts["h1"], hosts["h2"]
    fleet, proc = _apply_40_until_h2_begins(h1, h2, tmp_path)
    h2.freeze()
    try:
        out, _ = proc.communicate(timeout=60)  # a guard against a hang, not a speed target
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("fleet apply hung on a daemon frozen mid-run")
    doc = json.loads(out)
    assert proc.returncode == 9, doc
    assert all(i["ok"] for i in doc["results"] if i["host"] == "h1") and len(h1.names()) == 20
    lost = [i for i in doc["results"] if i["host"] == "h2" and not i["ok"]]
    assert lost and {i["error"]["kind"] for i in lost} <= {"connection", "failure"}, lost


def test_two_applies_at_once_define_no_domain_twice(hosts, tmp_path):
    three = [hosts["h1"], hosts["h2"], hosts["h3"]]
    fleet = write_fleet(tmp_path, three, f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 6\n')
    runs = [spawn("apply", str(fleet)) for _ in range(2)]
    documents = [json.loads(p.communicate(timeout=60)[0]) for p in runs]
    outcomes = [(p.returncode, doc) for p, doc in zip(runs, documents)]
    assert sorted(code for code, _ in outcomes)[0] == 0, outcomes
    for code, doc in outcomes:  # the loser: a conflict (exit 5), or it found the work done
        assert code == 0 or (code == 5 and doc["error"]["kind"] == "conflict"), doc
    names = [n for h in three for n in h.names()]
    assert sorted(names) == [f"db-{n}" for n in range(1, 7)]
    assert fleet_json("plan", str(fleet))[1]["changed"] is False


def test_a_stale_plan_is_refused_and_a_fresh_one_applies(hosts, tmp_path):
    h1, h2 = hosts["h1"], hosts["h2"]
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{write_spec(tmp_path, "db")}"\ncount = 2\n')
    plan_file = tmp_path / "plan.json"
    assert fleet_json("plan", str(fleet), "-o", str(plan_file))[0] == 0
    h1.held.defineXML("<domain type='test'><name>intruder</name><memory>1024</memory>"
                      "<os><type>hvm</type></os></domain>")  # the hosts change after the plan was made
    code, doc = fleet_json("apply", str(fleet), "--plan", str(plan_file))
    assert code == 5 and doc["error"]["kind"] == "conflict", doc
    assert h1.names() == ["intruder"] and h2.names() == []  # nothing was changed
    assert fleet_json("plan", str(fleet), "-o", str(plan_file))[0] == 0
    code, doc = fleet_json("apply", str(fleet), "--plan", str(plan_file))
    assert code == 0, doc


def test_pins_and_spread(hosts, tmp_path):
    h1, h2, h3 = hosts["h1"], hosts["h2"], hosts["h3"]
    db, web = write_spec(tmp_path, "db"), write_spec(tmp_path, "web")
    fleet = write_fleet(tmp_path, [h1, h2, h3], f'''
        [[domains]]
        spec = "{db}"
        host = "h3"

        [[domains]]
        spec = "{web}"
        count = 3
        spread = "rack"
        ''', slots=4, host_extra={"h1": 'labels = { rack = "r1" }', "h2": 'labels = { rack = "r1" }',
                                  "h3": 'labels = { rack = "r2" }'})
    code, plan = fleet_json("plan", str(fleet))
    by_name = {i["name"]: i for i in plan["results"]}
    assert by_name["db"]["host"] == "h3"
    racks = {"h1": "r1", "h2": "r1", "h3": "r2"}
    spread = [by_name[f"web-{n}"] for n in (1, 2, 3)]
    placed_racks = [racks[i["host"]] for i in spread if i["host"]]
    assert sorted(placed_racks) == ["r1", "r2"]  # two racks: two copies, never two on one rack
    assert [i["action"] for i in spread].count("unplaceable") == 1 and code == 9
    assert "rack" in next(i["reason"] for i in spread if i["action"] == "unplaceable")
    h3.kill()
    code, plan = fleet_json("plan", str(fleet))
    db_item = next(i for i in plan["results"] if i["name"] == "db")
    assert db_item["action"] == "unknown" and db_item["host"] is None, db_item  # pinned to a host that is down


def test_max_failures_starts_no_new_host(hosts, tmp_path):
    """One host at a time, h1 first; h1 dies part-way: with --max-failures 1, h2 is never started."""
    h1, h2 = hosts["h1"], hosts["h2"]
    a, b = write_spec(tmp_path, "a", 128), write_spec(tmp_path, "b")
    fleet = write_fleet(tmp_path, [h1, h2], f'[[domains]]\nspec = "{a}"\nhost = "h1"\ncount = 24\n\n'
                        f'[[domains]]\nspec = "{b}"\nhost = "h2"\n', slots=40, settings="parallel_hosts = 1\nper_host = 1\n")
    proc = spawn("apply", str(fleet), "--max-failures", "1")
    deadline = time.monotonic() + 30
    while not h1.names() and time.monotonic() < deadline:
        time.sleep(0.005)
    h1.kill()
    out, _ = proc.communicate(timeout=60)
    doc = json.loads(out)
    assert proc.returncode == 9, doc
    b_item = next(i for i in doc["results"] if i["name"] == "b")
    assert b_item["ok"] is False and "not started" in b_item["error"]["message"], b_item
    assert h2.names() == []


def test_a_domain_of_another_fleet_is_never_taken(hosts, tmp_path):
    h1 = hosts["h1"]
    spec = write_spec(tmp_path, "db")
    other = write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\n', fleet="other")
    assert fleet_json("apply", str(other))[0] == 0
    mine = write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\nhost = "h1"\n', fleet="prod")
    code, doc = fleet_json("apply", str(mine))
    assert code == 9 and doc["results"][0]["action"] == "unplaceable", doc
    assert "another owner" in doc["results"][0]["reason"]
    code, listed = fleet_json("list", str(mine))
    assert code == 0 and listed["results"] == []  # not this fleet's


def test_a_spec_edited_after_the_plan_is_refused(hosts, tmp_path):
    """A reviewed plan says what will be created; a spec changed since (a domain to create shows no diff)
    must not be applied under that plan's fingerprint."""
    h1 = hosts["h1"]
    spec = write_spec(tmp_path, "db")
    fleet = write_fleet(tmp_path, [h1], f'[[domains]]\nspec = "{spec}"\n')
    plan_file = tmp_path / "plan.json"
    assert fleet_json("plan", str(fleet), "-o", str(plan_file))[0] == 0
    edited = tmp_path / spec
    edited.write_text(edited.read_text().replace("vcpus = 1", "vcpus = 2"))  # after the review
    code, doc = fleet_json("apply", str(fleet), "--plan", str(plan_file))
    assert code == 5 and doc["error"]["kind"] == "conflict", doc
    assert h1.names() == []  # nothing was changed
