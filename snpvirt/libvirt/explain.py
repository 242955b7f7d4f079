"""Known SEV-SNP start failures, recognised in libvirt's error or the QEMU log, each with one fix.

Sources: docs/snp-facts.md §4 (AMDESE/AMDSEV issues #223, #240, #253, #262, #218, #84).
"""

from __future__ import annotations

import re

# (pattern, what it means and what to do). The first match wins, most specific first.
KNOWN_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p, re.IGNORECASE), hint) for p, hint in (
    (r"hashes table area is invalid",
     "the firmware has no kernel-hashes area: use the AmdSev OVMF build (OVMF.amdsev.fd) or set snp.kernel_hashes = false"),
    (r"(GUID Table block|SEV information block) not found in pflash",
     "the firmware was loaded as pflash: SEV-SNP needs <loader type='rom' stateless='yes'> (snpvirt import --fix)"),
    (r"'sev-snp' launch security is not supported",
     "this QEMU/KVM cannot launch SEV-SNP: run snpvirt host check (QEMU >= 9.1, kernel >= 6.11, kvm_amd sev_snp=Y)"),
    (r"SNP_LAUNCH_START.*fw_error=(?!0\b)\d+|fw_error=(?!0\b)\d+.*SNP_LAUNCH_START",
     "the PSP firmware refused the launch: check the policy against the platform (SMT, ABI version, "
     "features) with snpvirt host check --policy SPEC, and the SEV firmware version (>= 1.51)"),
    (r"SNP_LAUNCH_START.*ret=-22|ret=-22.*SNP_LAUNCH_START",
     "KVM rejected the launch (-EINVAL): usually policy bits this kernel does not accept (bit 17 must be set; "
     "MIGRATE_MA and newer bits need recent kernels), SMT forbidden by policy while SMT is on, or firmware as pflash; "
     "run snpvirt host check --policy SPEC"),
    (r"ret=-28|no space left|ASID", "no free SEV-ES/SNP ASID: stop another confidential guest or raise the ASID limit in the BIOS"),
    (r"policy", "the guest policy was rejected: run snpvirt host check --policy SPEC"),
    (r"SNP_LAUNCH|sev-snp|SEV", "an SEV-SNP launch step failed: run snpvirt host check and see the QEMU log"),
))


def explain(*texts: str) -> str | None:
    """The hint for the first known cause found in the error message or the log tail."""
    joined = "\n".join(t for t in texts if t)
    for pattern, hint in KNOWN_CAUSES:
        if pattern.search(joined):
            return hint
    return None
