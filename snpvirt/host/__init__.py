"""Host readiness: local facts read below a sysroot (facts), libvirt's domain capabilities (domcaps),
firmware descriptors (firmware), the checks over those facts (checks), the gate that gathers the facts
and runs the checks (readiness), and the SEV firmware's version and TCB for `host show tcb` (sevfw).

May import: the vocabulary (errors, models, policy, fileio), attest/, launch/ and domain/. The facts
about libvirt come in as values (models.LibvirtFacts): nothing here imports libvirt.
"""
