"""The Ansible module snpvirt.snp.domains, run by the real ansible-playbook against a daemon-hosted test driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from tests.conftest import EXAMPLES, ROOT

pytestmark = pytest.mark.daemon
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# The task's registered result is written to a file (in check mode too), so the test reads what the module
# returned rather than parsing Ansible's screen output; `ignore_errors` lets a failed task get there.
PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: snpvirt specs on the test host
      snpvirt.snp.domains: {task}
      register: outcome
      ignore_errors: true
    - name: keep what the module returned
      ansible.builtin.copy:
        content: "{{{{ outcome | to_json }}}}"
        dest: {result}
      check_mode: false
      diff: false
      changed_when: false  # the recap's count is the module's alone
"""


@dataclass
class PlaybookRun:
    code: int
    stdout: str
    stderr: str
    result: dict


@pytest.fixture
def playbook(tmp_path):
    """Run one snpvirt.snp.domains task through ansible-playbook; every Ansible file stays in tmp_path."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-core is not installed next to {sys.executable}")
    env = {**os.environ,
           "ANSIBLE_COLLECTIONS_PATH": str(ROOT), "PYTHONPATH": str(ROOT),  # this checkout's collection and snpvirt
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false"}

    def run(task: dict, *flags: str) -> PlaybookRun:
        result_file = tmp_path / "result.json"
        result_file.unlink(missing_ok=True)
        book = tmp_path / "play.yml"
        book.write_text(PLAYBOOK.format(task=json.dumps(task), result=json.dumps(str(result_file))))
        proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e",
                               json.dumps({"ansible_python_interpreter": sys.executable}), str(book), *flags],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
        assert result_file.exists(), proc.stdout + proc.stderr
        return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, json.loads(result_file.read_text()))

    return run


@pytest.fixture
def specs(tmp_path):
    """Two specs: the web-01 example and a copy named web-02."""
    web = EXAMPLES / "web-01.toml"
    copy = tmp_path / "web-02.toml"
    copy.write_text(web.read_text().replace('name = "web-01"', 'name = "web-02"'))
    return [str(web), str(copy)]


def names(held, active_only=False):
    return sorted(d.name() for d in held.listAllDomains() if d.name() != "test" and (d.isActive() or not active_only))


def test_first_run_changes_and_the_second_does_not(libvirtd, held, playbook, specs):
    first = playbook({"uri": libvirtd.test_uri, "specs": specs, "state": "running"})
    assert first.result["changed"] is True and not first.result.get("failed"), first.stdout
    assert [(r["name"], r["action"], r["state"]) for r in first.result["results"]] == [
        ("web-01", "create", "running"), ("web-02", "create", "running")]
    assert names(held, active_only=True) == ["web-01", "web-02"]
    second = playbook({"uri": libvirtd.test_uri, "specs": specs, "state": "running"})
    assert second.result["changed"] is False and not second.result.get("failed"), second.stdout
    assert [r["action"] for r in second.result["results"]] == ["unchanged", "unchanged"]
    assert "changed=0" in second.stdout  # Ansible's own recap agrees


def test_check_mode_reports_the_plan_and_changes_nothing(libvirtd, held, playbook, specs):
    planned = playbook({"uri": libvirtd.test_uri, "specs": specs}, "--check", "--diff")
    assert planned.result["changed"] is True and not planned.result.get("failed"), planned.stdout
    assert [(r["action"], r["planned"], r["will_start"]) for r in planned.result["results"]] == [
        ("create", True, True), ("create", True, True)]
    assert names(held) == []  # libvirt holds nothing new
    assert "+defined: true" in planned.stdout and "+running: true" in planned.stdout  # --diff, per domain

    playbook({"uri": libvirtd.test_uri, "specs": specs[:1], "state": "running"})
    stop_plan = playbook({"uri": libvirtd.test_uri, "specs": specs[:1], "state": "shutoff"}, "--check", "--diff")
    assert stop_plan.result["changed"] is True and stop_plan.result["results"][0]["will_stop"] is True
    assert held.lookupByName("web-01").isActive()  # still running: the shutdown was only planned
    assert "-state: running" in stop_plan.stdout and "+state: shutoff" in stop_plan.stdout
    resize_plan = playbook({"uri": libvirtd.test_uri, "specs": specs[:1], "overrides": ["vcpus=8"]}, "--check", "--diff")
    assert resize_plan.result["results"][0]["action"] == "update"
    assert "-vcpus: 4" in resize_plan.stdout and "+vcpus: 8" in resize_plan.stdout
    persistent = held.lookupByName("web-01").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert ">4</vcpu>" in persistent  # libvirt's definition is untouched


def test_state_present_defines_without_starting(libvirtd, held, playbook, specs):
    defined = playbook({"uri": libvirtd.test_uri, "specs": specs[:1], "state": "present"})
    assert defined.result["changed"] is True and defined.result["results"][0]["state"] == "shutoff"
    assert names(held) == ["web-01"] and names(held, active_only=True) == []


def test_a_bad_spec_fails_with_snpvirts_message_and_hint(libvirtd, held, playbook, tmp_path, specs):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    failed = playbook({"uri": libvirtd.test_uri, "specs": [str(bad)]})
    assert failed.result["failed"] is True and failed.result["changed"] is False
    assert "malformed TOML" in failed.result["msg"] and failed.result["hint"], failed.result
    assert failed.result["kind"] == "bad_input" and failed.result["results"][0]["ok"] is False
    assert "ignored=1" in failed.stdout  # Ansible saw the task fail
    assert names(held) == []

    partial = playbook({"uri": libvirtd.test_uri, "specs": [specs[0], str(bad)]})
    assert partial.result["failed"] is True and partial.result["kind"] == "partial"
    assert partial.result["changed"] is True and names(held) == ["web-01"]  # the good spec was applied


def test_an_unreachable_host_fails_with_the_connection_error(libvirtd, playbook, tmp_path, specs):
    uri = f"test+unix:///default?socket={tmp_path / 'no-such-socket'}"
    failed = playbook({"uri": uri, "specs": specs})
    assert failed.result["failed"] is True and failed.result["kind"] == "connection"
    assert "cannot talk to" in failed.result["msg"] and "libvirtd" in failed.result["hint"]


def test_the_documentation_matches_the_argument_spec(tmp_path):
    """ansible-doc reads DOCUMENTATION; AnsibleModule reads ARGUMENT_SPEC: the two must say the same."""
    import importlib.util

    doc_cli = Path(sys.executable).parent / "ansible-doc"
    if not doc_cli.exists():
        pytest.skip(f"ansible-core is not installed next to {sys.executable}")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT), "ANSIBLE_HOME": str(tmp_path)}
    shown = subprocess.run([str(doc_cli), "--json", "snpvirt.snp.domains"], capture_output=True, text=True, env=env,
                           timeout=120, check=True)
    documented = json.loads(shown.stdout)["snpvirt.snp.domains"]["doc"]["options"]
    path = ROOT / "ansible_collections/snpvirt/snp/plugins/modules/domains.py"
    spec = importlib.util.spec_from_file_location("snpvirt_ansible_domains", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = ("type", "elements", "choices", "required", "default")
    as_documented = {name: {k: v for k, v in option.items() if k in keys and v not in (None, False)}
                     for name, option in documented.items()}
    as_coded = {name: {k: v for k, v in option.items() if k in keys and v not in (None, False)}
                for name, option in module.ARGUMENT_SPEC.items()}
    assert as_documented == as_coded
