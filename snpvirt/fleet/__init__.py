"""Many libvirt hosts, one desired state: the fleet file, observing hosts, placement, plan and apply.

Orchestration, like manager.py: it works on connections and managers passed in as objects (the CLI
opens them), never imports libvirt or snpvirt/libvirt/, and never prints. Each host is worked on with
the single-host Manager; this package decides where domains go and fans the work out.
"""
