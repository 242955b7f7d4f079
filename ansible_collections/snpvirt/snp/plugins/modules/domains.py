#!/usr/bin/python
# Copyright: snpvirt contributors
# Apache License 2.0 (see the LICENSE of the snpvirt repository)
"""Ansible module snpvirt.snp.domains: snpvirt apply, as one task over many specs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: domains
short_description: Make AMD SEV-SNP domains on one libvirt host match their snpvirt specs
version_added: "0.1.0"
description:
  - Defines, redefines, starts and shuts down SEV-SNP confidential VMs on one libvirt connection so
    that each matches its snpvirt spec (a TOML file), exactly as C(snpvirt apply) does.
  - One task takes many specs; they are worked on together over one connection, which is much faster
    than a task per domain.
  - Calls snpvirt's library (C(snpvirt.api.apply)), not its command line. Before the first change, the
    host passes snpvirt's SEV-SNP readiness gate; a domain of the same name that snpvirt does not manage
    is never touched.
  - Idempotent. A second run with the same specs reports C(changed=false).
requirements:
  - snpvirt and libvirt-python, importable by the Python that runs the module (C(ansible_python_interpreter))
options:
  uri:
    description:
      - The libvirt URI, for example V(qemu:///system) on the host itself or V(qemu+ssh://root@host1/system)
        from a controller.
      - When omitted, libvirt's default (E(LIBVIRT_DEFAULT_URI), then libvirt's own choice), as C(virsh).
    type: str
  specs:
    description:
      - The snpvirt spec files (TOML), on the node that runs the module. Relative paths are relative to the
        module's working directory; prefer absolute ones, for example C({{ playbook_dir }}/vms/db.toml).
      - Each spec names one domain; two specs naming the same domain fail.
    type: list
    elements: path
    required: true
  state:
    description:
      - V(running) defines each domain as specified and starts it.
      - V(shutoff) defines it and shuts a running one down gracefully (waiting up to O(shutdown_timeout)).
      - V(present) defines (or redefines) it and leaves its run state alone.
      - When omitted, each spec's own C(state) key decides (running unless it says shutoff).
    type: str
    choices: [running, shutoff, present]
  restart:
    description:
      - A running domain whose definition changed is redefined and reported with C(restart_required=true).
        With O(restart=true) it is restarted (graceful shutdown, then start; one at a time).
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for a graceful shutdown (O(state=shutoff), O(restart=true)).
    type: float
    default: 60
  overrides:
    description:
      - C(KEY=VALUE) changes applied to every spec before it is checked, as C(snpvirt apply --set),
        for example V(vcpus=8) or V(snp.policy.smt=false).
    type: list
    elements: str
    default: []
  host_caps:
    description: Saved domain capabilities (C(virsh domcapabilities)) for specs without cbitpos/reducedPhysBits.
    type: path
  allow_debug:
    description: Permit a guest policy with DEBUG set (its memory can be read by the host).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports the plan (what would be created, updated, started, shut down); nothing changes.
  diff_mode:
    support: full
    description: Shows, per domain, the keys that change (before and after), and creation and run-state changes.
notes:
  - A failure carries snpvirt's error message in C(msg), its advice in C(hint) and its kind in C(kind).
    When only some specs fail, the others are still applied and C(kind) is V(partial).
  - Use Ansible's forks, C(serial) and C(max_fail_percentage) to work on many hosts.
author:
  - snpvirt contributors
"""

EXAMPLES = r"""
- name: The database and web guests run on this host
  snpvirt.snp.domains:
    uri: qemu:///system
    specs:
      - /etc/snpvirt/vms/db-01.toml
      - /etc/snpvirt/vms/web-01.toml
    state: running

- name: From the controller, over SSH, every spec of the play's folder; restart those on an old definition
  snpvirt.snp.domains:
    uri: "qemu+ssh://root@{{ inventory_hostname }}/system"
    specs: "{{ query('fileglob', playbook_dir + '/vms/*.toml') }}"
    restart: true
  delegate_to: localhost

- name: Defined, not started
  snpvirt.snp.domains:
    specs: [/etc/snpvirt/vms/batch.toml]
    state: present
"""

RETURN = r"""
results:
  description: One entry per spec, in the order given, as C(snpvirt apply --json) reports it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The domain's name (the spec's path when the spec could not be read).
      type: str
      sample: web-01
    ok:
      description: Whether this spec was applied.
      type: bool
    changed:
      description: Whether this domain changed (in check mode, whether it would).
      type: bool
    action:
      description: V(create), V(update), V(unchanged), or why it was refused (V(invalid), V(conflict), ...).
      type: str
      sample: create
    state:
      description: The domain's state afterwards (in check mode, its current state; V(absent) before creation).
      type: str
      sample: running
    diff:
      description: The keys that change, each with C(key), C(from) and C(to).
      type: list
      elements: dict
    restart_required:
      description: It runs an older definition; it takes the new one when restarted.
      type: bool
    error:
      description: When it failed, snpvirt's C(kind), C(message) and C(hint).
      type: dict
      returned: when failed
hint:
  description: snpvirt's advice on the error, when the task failed.
  returned: failure
  type: str
  sample: "check the URI and that libvirtd (or virtqemud) runs: systemctl status libvirtd"
kind:
  description: snpvirt's error kind (its exit code's name), when the task failed.
  returned: failure
  type: str
  sample: connection
"""

import json
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from snpvirt import api, output
    from snpvirt.errors import SnpvirtError
except ImportError:
    SNPVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    SNPVIRT_IMPORT_ERROR = None

ARGUMENT_SPEC = dict(
    uri=dict(type="str"),
    specs=dict(type="list", elements="path", required=True),
    state=dict(type="str", choices=["running", "shutoff", "present"]),
    restart=dict(type="bool", default=False),
    shutdown_timeout=dict(type="float", default=60.0),
    overrides=dict(type="list", elements="str", default=[]),
    host_caps=dict(type="path"),
    allow_debug=dict(type="bool", default=False),
)


def _value(value):
    return json.dumps(value) if not isinstance(value, str) else value


def domain_diff(result):
    """Ansible's before/after for one domain's result: the changed keys, its creation, its run state."""
    before, after = [], []
    if result["action"] == "create":
        before.append("defined: false")
        after.append("defined: true")
    for change in result.get("diff", []):
        before.append("%s: %s" % (change["key"], _value(change["from"])))
        after.append("%s: %s" % (change["key"], _value(change["to"])))
    if result.get("will_start"):
        before.append("running: false")
        after.append("running: true")
    if result.get("will_restart"):
        before.append("running definition: previous")
        after.append("running definition: new (restarted)")
    elif result.get("restart_required"):
        after.append("restart_required: true  # runs the previous definition until restarted")
    return dict(before_header=result["name"], after_header=result["name"],
                before="".join(line + "\n" for line in before), after="".join(line + "\n" for line in after))


def run(module):
    params = module.params
    try:
        applied = api.apply(params["uri"], params["specs"], state=params["state"], check=module.check_mode,
                            restart=params["restart"], shutdown_timeout_s=params["shutdown_timeout"],
                            overrides=params["overrides"], allow_debug=params["allow_debug"],
                            host_caps=params["host_caps"])
    except SnpvirtError as err:  # the whole call stopped: cannot connect, host not ready, bad arguments
        module.fail_json(msg=err.message, hint=err.hint, kind=err.kind, changed=False, results=[])
    for warning in applied.warnings:
        module.warn("%s (%s)" % (warning.message, warning.hint) if warning.hint else warning.message)
    results = applied.as_dicts()
    outcome = dict(changed=applied.changed, results=results)
    if module._diff:
        outcome["diff"] = [domain_diff(r) for r in results if r["ok"] and r["changed"]]
    error = output.batch_error([r["error"] for r in results if "error" in r], len(results))
    if error is not None:
        module.fail_json(msg=error["message"], hint=error["hint"], kind=error["kind"], **outcome)
    module.exit_json(**outcome)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if SNPVIRT_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("snpvirt (and libvirt-python)"), exception=SNPVIRT_IMPORT_ERROR)
    try:
        run(module)
    except Exception as exc:  # a bug, not an error a user can act on: say so, with the traceback for -vvv
        module.fail_json(msg="internal error: %s: %s" % (type(exc).__name__, exc), exception=traceback.format_exc())


if __name__ == "__main__":
    main()
