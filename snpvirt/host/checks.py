"""Host readiness for SEV-SNP: checks over injected facts (local files, libvirt, domcaps, a policy).

Each check has a stable id, a status (pass/warn/fail/skip), what it found, one concrete fix for
a fail or warn, and its facts. A check whose parent failed or could not run is `skip`, as in
snphost. Sources for every rule: docs/snp-facts.md §1-§2.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from snpvirt import policy as snp_policy
from snpvirt.host.facts import LocalFacts
from snpvirt.models import CheckResult, HostReport, HostSevCaps, LibvirtFacts

MIN_KERNEL = (6, 11)
MIN_LIBVIRT = 10_005_000
MIN_QEMU = 9_001_000
# Policy bits upstream KVM accepted in 6.11: ABI minor/major, SMT, bit 17, DEBUG, SINGLE_SOCKET.
KVM_6_11_POLICY_MASK = 0xFFFF | 1 << 16 | 1 << 17 | 1 << 19 | 1 << 20
SEV_BITS = {"cpu.sev": (1, "sev"), "cpu.sev_es": (3, "sev_es"), "cpu.sev_snp": (4, "sev_snp")}
REBOOT_KVM = "then reload kvm_amd (modprobe -r kvm_amd; modprobe kvm_amd) or reboot"


@dataclass(frozen=True)
class HostInputs:
    local: LocalFacts | None
    local_skip: str = ""  # why local files are not read (remote host)
    libvirt: LibvirtFacts | None = None
    libvirt_skip: str = "no libvirt connection"
    domcaps: HostSevCaps | None = None
    domcaps_source: str = ""
    domcaps_skip: str = "no domain capabilities (give --connect URI or --host-caps FILE)"
    policy: int | None = None
    spec_firmware: str | None = None


def _result(check_id: str, status: str, message: str, hint: str = "", **facts) -> CheckResult:
    return CheckResult(check_id, status, message, hint, facts)


def _ok(flag: bool) -> str:
    return "pass" if flag else "fail"


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


# --- CPU -----------------------------------------------------------------------------------------

def cpu_vendor(h: HostInputs) -> CheckResult:
    vendor = h.local.cpuid_vendor or h.local.cpuinfo_vendor
    if vendor is None:
        return _result("cpu.vendor", "skip", h.local.unreadable.get("cpuinfo", "CPU vendor unknown"))
    model = h.local.cpuinfo_model or ""
    return _result("cpu.vendor", _ok(vendor == "AuthenticAMD"), f"{vendor} {model}".strip(),
                   "" if vendor == "AuthenticAMD" else "SEV-SNP needs an AMD EPYC 7003 (Milan) or newer CPU",
                   vendor=vendor, model=model)


def _cpu_feature(check_id: str, hint: str) -> Callable[[HostInputs], CheckResult]:
    bit, flag = SEV_BITS[check_id]

    def check(h: HostInputs) -> CheckResult:
        regs = h.local.cpuid_sev
        if regs is not None:
            present = bool(regs[0] >> bit & 1)
            return _result(check_id, _ok(present), f"CPUID 0x8000001F EAX bit {bit} is {int(present)}",
                           "" if present else hint, eax=f"{regs[0]:#x}")
        flags = h.local.cpuinfo_flags
        if flags is None:
            return _result(check_id, "skip", f"cannot read CPUID or /proc/cpuinfo ({h.local.unreadable.get('cpuid')})")
        present = flag in flags
        note = f"({h.local.unreadable.get('cpuid', 'cpuid device unusable')}; from /proc/cpuinfo flags instead)"
        return _result(check_id, _ok(present), f"cpuinfo flag '{flag}' {'present' if present else 'absent'} {note}",
                       "modprobe cpuid to read CPUID directly" if present else f"{hint} (or modprobe cpuid to read CPUID directly)",
                       source="/proc/cpuinfo")
    return check


def cpu_cbitpos(h: HostInputs) -> CheckResult:
    if h.local.cpuid_sev is None:
        return _result("cpu.cbitpos", "skip", f"needs CPUID: {h.local.unreadable.get('cpuid', 'unavailable')}",
                       "modprobe cpuid")
    ebx = h.local.cpuid_sev[1]
    cbitpos, reduction, vmpls = ebx & 0x3F, ebx >> 6 & 0x3F, ebx >> 12 & 0xF
    facts = {"cbitpos": cbitpos, "phys_addr_reduction": reduction, "vmpls": vmpls}
    found = f"C-bit {cbitpos}, host physical-address reduction {reduction}"
    libvirt_cbitpos = h.domcaps.cbitpos if h.domcaps is not None else None
    if libvirt_cbitpos is None:
        return _result("cpu.cbitpos", "pass", f"{found} (no libvirt cbitpos to compare)", **facts)
    if libvirt_cbitpos != cbitpos:
        return _result("cpu.cbitpos", "fail", f"{found}, but libvirt reports cbitpos {libvirt_cbitpos}",
                       "libvirt's cached QEMU capabilities are stale: restart libvirtd (or virtqemud) to re-probe", **facts)
    return _result("cpu.cbitpos", "pass", f"{found}; libvirt agrees", **facts)


def asid_snp(h: HostInputs) -> CheckResult:
    if h.local.cpuid_sev is None:
        return _result("asid.snp", "skip", f"needs CPUID: {h.local.unreadable.get('cpuid', 'unavailable')}", "modprobe cpuid")
    _, _, max_asid, min_sev_asid = h.local.cpuid_sev
    pool = max(min_sev_asid - 1, 0)
    facts = {"snp_asids": pool, "min_sev_asid": min_sev_asid, "max_asid": max_asid}
    if pool == 0:
        return _result("asid.snp", "fail", f"no ASIDs for SEV-ES/SNP guests (minimum SEV non-ES ASID is {min_sev_asid})",
                       "BIOS: raise 'SEV-ES ASID Space Limit' / 'Minimum SEV non-ES ASID' (e.g. to 100)", **facts)
    return _result("asid.snp", "pass", f"{pool} ASIDs for SEV-ES/SNP guests (1..{pool})", **facts)


# --- kernel and KVM ------------------------------------------------------------------------------

def kvm_dev(h: HostInputs) -> CheckResult:
    return _result("kvm.dev", _ok(h.local.kvm_dev), "/dev/kvm " + ("present" if h.local.kvm_dev else "absent"),
                   "" if h.local.kvm_dev else "enable SVM (AMD-V) in the BIOS and load kvm_amd: modprobe kvm_amd")


def _kvm_param(name: str) -> Callable[[HostInputs], CheckResult]:
    check_id = f"kvm_amd.{name}"

    def check(h: HostInputs) -> CheckResult:
        if not h.local.kvm_amd_loaded:
            return _result(check_id, "fail", "kvm_amd is not loaded", "modprobe kvm_amd")
        value = h.local.kvm_amd_params.get(name)
        if value is None:
            reason = h.local.unreadable.get(check_id, "")
            if "permission" in reason:
                return _result(check_id, "skip", reason)
            return _result(check_id, "fail", f"kvm_amd has no '{name}' parameter: this kernel lacks SEV-SNP host support",
                           "install a kernel >= 6.11 with CONFIG_KVM_AMD_SEV=y")
        enabled = value in ("Y", "1")
        if not enabled and name == "sev_es" and h.local.kvm_amd_params.get("sev_snp") in ("Y", "1"):
            # Recent AMD firmware disables SEV-ES when SNP is on (CVE-2025-48514): SNP is unaffected.
            return _result(check_id, "warn", f"sev_es = {value}: SEV-ES guests unavailable while SNP is on",
                           "nothing to do for SNP guests; SEV-ES guests need firmware without the CVE-2025-48514 change",
                           value=value)
        return _result(check_id, _ok(enabled), f"{name} = {value}",
                       "" if enabled else f"add 'options kvm_amd sev=1 sev_es=1 sev_snp=1' to /etc/modprobe.d/kvm-amd.conf, "
                                          f"{REBOOT_KVM}; if it stays N see dmesg | grep -i sev (BIOS, ASIDs, firmware >= 1.51)",
                       value=value)
    return check


def psp_dev_sev(h: HostInputs) -> CheckResult:
    node, user = h.local.dev_sev, h.local.qemu_user
    if node is None:
        return _result("psp.dev_sev", "fail", "/dev/sev is absent",
                       "load the PSP driver (modprobe ccp) and check dmesg | grep -i 'sev' for firmware init errors")
    facts = {"mode": f"{stat.S_IMODE(node.mode):04o}", "uid": node.uid, "gid": node.gid,
             "qemu_user": user.name if user else None}
    if user is None or user.uid is None:
        return _result("psp.dev_sev", "pass", "/dev/sev present (QEMU user unknown here; libvirt grants it access)", **facts)
    mode = node.mode
    can_open = user.uid == 0 or (node.uid == user.uid and mode & 0o600 == 0o600) or \
        (node.gid in user.gids and mode & 0o060 == 0o060) or mode & 0o006 == 0o006
    if can_open:
        return _result("psp.dev_sev", "pass", f"/dev/sev present, read-write for QEMU user {user.name}", **facts)
    return _result("psp.dev_sev", "warn", f"/dev/sev ({facts['mode']}) is not read-write for QEMU user {user.name}",
                   "libvirt normally grants it per domain; if QEMU cannot open it: chgrp kvm /dev/sev; chmod 0660 /dev/sev "
                   "(udev rule: KERNEL==\"sev\", GROUP=\"kvm\", MODE=\"0660\")", **facts)


def kernel_version(h: HostInputs) -> CheckResult:
    release = h.local.kernel_release
    match = re.match(r"(\d+)\.(\d+)", release or "")
    if not match:
        return _result("kernel.version", "skip", h.local.unreadable.get("kernel_release", f"cannot parse {release!r}"))
    version = (int(match.group(1)), int(match.group(2)))
    if version >= MIN_KERNEL:
        return _result("kernel.version", "pass", f"{release} (>= 6.11)", release=release)
    if h.local.kvm_amd_params.get("sev_snp") in ("Y", "1"):
        return _result("kernel.version", "warn", f"{release} is older than 6.11 but kvm_amd reports SNP (a backport)",
                       "keep QEMU and this kernel in lock-step: use the QEMU your kernel vendor pairs with it", release=release)
    return _result("kernel.version", "fail", f"{release} is older than 6.11 (no upstream SEV-SNP host support)",
                   "install a kernel >= 6.11 (Debian 12: linux-image-amd64 from bookworm-backports)", release=release)


def kernel_iommu(h: HostInputs) -> CheckResult:
    cmdline = h.local.cmdline
    if cmdline is None:
        return _result("kernel.iommu", "skip", h.local.unreadable.get("cmdline", "/proc/cmdline unreadable"))
    kernel_args = cmdline.split(" -- ")[0].split()
    bad = [a for a in kernel_args if a == "iommu=pt" or a == "amd_iommu=off"
           or (a.startswith("amd_iommu=") and "pgtbl_v2" in a.split("=", 1)[1].split(","))]
    units = h.local.iommu_units
    if bad:
        return _result("kernel.iommu", "fail", f"kernel command line has {' '.join(bad)}: SNP needs the IOMMU on, "
                       "translated, with v1 page tables",
                       f"remove {' '.join(bad)} from GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot",
                       arguments=bad)
    if not units:
        return _result("kernel.iommu", "fail", "no IOMMU is active (/sys/class/iommu is empty)",
                       "enable the IOMMU in the BIOS (AMD-Vi / IOMMU: Enabled) and reboot", units=[])
    return _result("kernel.iommu", "pass", f"IOMMU active ({', '.join(units)}), no passthrough or v2 page table",
                   units=list(units))


# --- libvirt -------------------------------------------------------------------------------------

def _at_least(check_id: str, product: str, version: int, minimum: int, hint: str) -> CheckResult:
    ok = version >= minimum
    return _result(check_id, _ok(ok), f"{product} {_version(version)}" + ("" if ok else f" (SEV-SNP needs >= {_version(minimum)})"),
                   "" if ok else hint, version=_version(version))


def libvirt_version(h: HostInputs) -> CheckResult:
    if h.libvirt is None or h.libvirt.lib_version is None:
        return _result("libvirt.version", "skip", h.libvirt_skip)
    return _at_least("libvirt.version", "libvirt", h.libvirt.lib_version, MIN_LIBVIRT,
                     "install libvirt >= 10.5 (Debian 12: bookworm-backports; Ubuntu >= 25.04)")


def qemu_version(h: HostInputs) -> CheckResult:
    if h.libvirt is None:
        return _result("qemu.version", "skip", h.libvirt_skip)
    if h.libvirt.driver != "QEMU" or h.libvirt.hypervisor_version is None:
        return _result("qemu.version", "skip", f"the connection's driver is {h.libvirt.driver}, not QEMU")
    return _at_least("qemu.version", "QEMU", h.libvirt.hypervisor_version, MIN_QEMU,
                     "install QEMU >= 9.1 (Debian 12: qemu-system-x86 from bookworm-backports)")


def domcaps_sev(h: HostInputs) -> CheckResult:
    caps = h.domcaps
    if caps is None:
        return _result("domcaps.sev", "skip", h.domcaps_skip)
    facts = {"cbitpos": caps.cbitpos, "reduced_phys_bits": caps.reduced_phys_bits, "max_guests": caps.max_guests,
             "max_es_guests": caps.max_es_guests, "source": h.domcaps_source}
    if not caps.sev_supported:
        return _result("domcaps.sev", "fail", f"{h.domcaps_source}: <sev supported='no'>",
                       "libvirt found no usable SEV in QEMU/KVM: fix the failed CPU/kvm_amd/psp checks, "
                       "then restart libvirtd so it probes QEMU again", **facts)
    return _result("domcaps.sev", "pass", f"SEV supported: cbitpos {caps.cbitpos}, reducedPhysBits {caps.reduced_phys_bits}, "
                   f"maxGuests {caps.max_guests}, maxESGuests {caps.max_es_guests}", **facts)


def domcaps_sev_snp(h: HostInputs) -> CheckResult:
    if h.domcaps is None:
        return _result("domcaps.sev_snp", "skip", h.domcaps_skip)
    ok = h.domcaps.snp_advertised
    return _result("domcaps.sev_snp", _ok(ok),
                   f"{h.domcaps_source}: <launchSecurity> {'lists' if ok else 'does not list'} sev-snp",
                   "" if ok else "needs libvirt >= 10.5, QEMU >= 9.1 and kvm_amd sev_snp=Y; restart libvirtd after fixing them",
                   source=h.domcaps_source)


def capacity(h: HostInputs) -> CheckResult:
    maximum = h.domcaps.max_es_guests if h.domcaps else None
    running = h.libvirt.running_es_snp_guests if h.libvirt else None
    if maximum is None or running is None:
        return _result("capacity.snp_guests", "skip", "needs maxESGuests and the running domains from a libvirt connection")
    free = maximum - running
    facts = {"running": running, "max_es_guests": maximum, "free": free}
    if free <= 0:
        return _result("capacity.snp_guests", "warn", f"no free SEV-ES/SNP ASIDs: {running} of {maximum} in use",
                       "stop an SEV-ES/SNP guest, or raise the SEV-ES ASID limit in the BIOS", **facts)
    return _result("capacity.snp_guests", "pass", f"{running} of {maximum} SEV-ES/SNP guests running, {free} free", **facts)


# --- firmware ------------------------------------------------------------------------------------

def firmware_snp(h: HostInputs) -> CheckResult:
    if h.spec_firmware:
        # The domain loads exactly this file, whatever descriptors the host has.
        file = h.local.firmware_files[h.spec_firmware]
        if file.image is not None:
            return _result("firmware.snp", "pass", f"{h.spec_firmware} (the spec's firmware; carries OVMF SEV metadata)",
                           firmware=h.spec_firmware, kernel_hashes=file.image.has_kernel_hashes)
        return _result("firmware.snp", "fail", f"the spec's firmware {h.spec_firmware}: {file.error}",
                       "point the spec's firmware at an SEV-capable OVMF: the AmdSev build, e.g. OVMF.amdsev.fd",
                       firmware=h.spec_firmware)
    snp = [d for d in h.local.descriptors if d.offers_snp]
    usable = [d for d in snp if d.snp_mapping_ok]
    for d in usable:
        file = h.local.firmware_files.get(d.executable)  # None too for a descriptor that names no file
        if file is not None and file.image is not None:
            return _result("firmware.snp", "pass", f"{d.executable} (descriptor {d.path})",
                           descriptor=d.path, firmware=d.executable, kernel_hashes=file.image.has_kernel_hashes)
    if usable:
        d = usable[0]
        file = h.local.firmware_files.get(d.executable)
        error = file.error if file is not None else "the descriptor names no file"
        return _result("firmware.snp", "fail", f"descriptor {d.path} names {d.executable}: {error}",
                       "install the firmware package that provides it (Fedora: edk2-ovmf; Ubuntu: ovmf)",
                       descriptor=d.path, firmware=d.executable)
    if snp:
        return _result("firmware.snp", "fail", f"{snp[0].path} offers amd-sev-snp but maps it as {snp[0].device} "
                       f"({snp[0].mode or 'no mode'}): SNP firmware must be ROM or stateless flash",
                       "use a descriptor with \"device\": \"memory\" or flash \"mode\": \"stateless\"", descriptor=snp[0].path)
    found = ", ".join(d.path.rsplit("/", 1)[-1] for d in h.local.descriptors) or "none"
    return _result("firmware.snp", "fail", f"no QEMU firmware descriptor offers amd-sev-snp (descriptors: {found})",
                   "install an OVMF AmdSev build with its descriptor (Fedora: edk2-ovmf's OVMF.amdsev.fd; Ubuntu: ovmf), "
                   "or name an OVMF.amdsev.fd as the spec's firmware", descriptors=[d.path for d in h.local.descriptors])


# --- policy --------------------------------------------------------------------------------------

def policy_smt(h: HostInputs) -> CheckResult:
    smt_allowed = bool(h.policy >> 16 & 1)
    if h.local is None or h.local.smt_active is None:
        return _result("policy.smt", "skip", h.local_skip or h.local.unreadable.get("smt", "SMT state unknown"))
    if h.local.smt_active and not smt_allowed:
        return _result("policy.smt", "fail", f"policy {snp_policy.to_hex(h.policy)} forbids SMT but host SMT is active",
                       "set snp.policy.smt = true, or disable SMT (BIOS, or: echo off > /sys/devices/system/cpu/smt/control)",
                       smt_active=True)
    return _result("policy.smt", "pass", f"SMT {'active' if h.local.smt_active else 'off'} on the host; "
                   f"policy {'allows' if smt_allowed else 'forbids'} it", smt_active=h.local.smt_active)


def policy_debug(h: HostInputs) -> CheckResult:
    if h.policy & snp_policy.DEBUG_BIT:
        return _result("policy.debug", "warn", f"policy {snp_policy.to_hex(h.policy)} allows debugging: "
                       "the host can read guest memory", "clear snp.policy.debug for any guest with real data")
    return _result("policy.debug", "pass", "DEBUG is clear")


def policy_bits(h: HostInputs) -> CheckResult:
    problems = [p for p in snp_policy.problems(h.policy, allow_debug=True)]
    if problems:
        return _result("policy.bits", "fail", problems[0].message, problems[0].hint)
    extra = h.policy & ~KVM_6_11_POLICY_MASK
    if extra:
        names = snp_policy.set_flag_names(extra)
        return _result("policy.bits", "warn", f"policy sets {', '.join(names)} ({snp_policy.to_hex(extra)}), "
                       "which KVM before the 2025 policy extensions rejects (SNP_LAUNCH_START -EINVAL)",
                       "make sure the host kernel accepts these bits, or clear them", bits=names)
    return _result("policy.bits", "pass", f"policy {snp_policy.to_hex(h.policy)} uses only bits every SNP kernel accepts")


@dataclass(frozen=True)
class Check:
    check_id: str
    run: Callable[[HostInputs], CheckResult]
    parents: tuple[str, ...] = ()
    local: bool = False  # reads the host's files: skipped for a remote host
    needs_policy: bool = False


CHECKS: tuple[Check, ...] = (
    Check("cpu.vendor", cpu_vendor, local=True),
    Check("cpu.sev", _cpu_feature("cpu.sev", "enable SME and SEV in the BIOS (SMEE, 'SEV Control')"), ("cpu.vendor",), True),
    Check("cpu.sev_es", _cpu_feature("cpu.sev_es", "enable SEV-ES in the BIOS"), ("cpu.sev",), True),
    Check("cpu.sev_snp", _cpu_feature("cpu.sev_snp", "needs EPYC 7003 (Milan) or newer; BIOS: enable 'SEV-SNP Support' "
                                      "and 'SNP Memory Coverage'"), ("cpu.sev",), True),
    Check("cpu.cbitpos", cpu_cbitpos, ("cpu.sev",), True),
    Check("asid.snp", asid_snp, ("cpu.sev_snp",), True),
    Check("kvm.dev", kvm_dev, local=True),
    Check("kvm_amd.sev", _kvm_param("sev"), local=True),
    Check("kvm_amd.sev_es", _kvm_param("sev_es"), ("kvm_amd.sev",), True),
    Check("kvm_amd.sev_snp", _kvm_param("sev_snp"), ("kvm_amd.sev",), True),
    Check("psp.dev_sev", psp_dev_sev, local=True),
    Check("kernel.version", kernel_version, local=True),
    Check("kernel.iommu", kernel_iommu, local=True),
    Check("libvirt.version", libvirt_version),
    Check("qemu.version", qemu_version),
    Check("domcaps.sev", domcaps_sev),
    Check("domcaps.sev_snp", domcaps_sev_snp),
    Check("firmware.snp", firmware_snp, local=True),
    Check("capacity.snp_guests", capacity, ("domcaps.sev",)),
    Check("policy.smt", policy_smt, needs_policy=True),
    Check("policy.debug", policy_debug, needs_policy=True),
    Check("policy.bits", policy_bits, needs_policy=True),
)
# snpvirt drives SNP through libvirt: without libvirt's word that it can launch SNP, a host is not ready.
DECISIVE = "domcaps.sev_snp"


def run_checks(h: HostInputs, host: dict | None = None) -> HostReport:
    results: dict[str, CheckResult] = {}
    blocked_by: dict[str, str] = {}  # a skipped check -> the failed or unavailable check at the root of it
    for check in CHECKS:
        if check.needs_policy and h.policy is None:
            continue
        blocked = next((p for p in check.parents if results[p].status in ("fail", "skip")), None)
        if blocked is not None:
            root = blocked_by.get(blocked, blocked)
            blocked_by[check.check_id] = root
            verb = "failed" if results[root].status == "fail" else "could not be checked"
            results[check.check_id] = _result(check.check_id, "skip", f"{root} {verb}")
        elif check.local and h.local is None:
            results[check.check_id] = _result(check.check_id, "skip", h.local_skip)
        else:
            results[check.check_id] = check.run(h)
    checks = tuple(results.values())
    failed = [c.check_id for c in checks if c.status == "fail"]
    decisive = results[DECISIVE]
    ready = not failed and decisive.status == "pass"
    if ready:
        warnings = [c.check_id for c in checks if c.status == "warn"]
        summary = "ready for SEV-SNP guests" + (f" (warnings: {', '.join(warnings)})" if warnings else "")
    elif failed:
        summary = f"not ready: {len(failed)} check(s) failed: {', '.join(failed)}"
    else:
        summary = f"not ready: {DECISIVE} could not be checked ({decisive.message})"
    return HostReport(ready, host or {}, checks, summary)



def is_remote_uri(uri: str | None) -> bool:
    """qemu+ssh://host/system is remote; qemu:///system and qemu+unix:///system?socket=... are local."""
    if not uri:
        return False
    parts = urlsplit(uri)
    return bool(parts.netloc) or any(t in parts.scheme for t in ("+ssh", "+tcp", "+tls", "+libssh"))
