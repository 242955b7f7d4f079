"""The parts of the one-host manager (snpvirt.manager.Manager composes them), one job each.

`base.py`: the Hypervisor protocol, Outcome, SpecInput and the checks every part shares; `guards.py`:
what a change or a start must pass; `apply.py`: desired state from specs (plan, the worker pipeline);
`define.py`: XML documents and import; `verbs.py`: start, stop, destroy, undefine; `reading.py`:
inventory, status, the recorded measurement. Orchestration: imports the vocabulary and the capabilities,
never libvirt or libvirt/ (it takes the hypervisor as an object), never output or cli.
"""
