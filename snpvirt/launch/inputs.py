"""What a launch will measure, from the files readable here: input digests, the expected
measurement, and (with snp.id_key) the signed ID block. Everything the domain's metadata records.

Files that cannot be read (a remote host's paths) make the measurement "unknown", with the reason.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field

from snpvirt import fileio
from snpvirt.launch import measure
from snpvirt.errors import BadInputError
from snpvirt.models import FileDigest, VmSpec


@functools.lru_cache(maxsize=64)
def _sha256(path: str, kind: str, size: int, mtime_ns: int) -> str:
    """Cached by size and mtime: a fleet of specs usually shares one firmware file and kernel."""
    return fileio.sha256_input(path, kind)[0]


def file_digest(path: str, kind: str) -> FileDigest:
    """A launch file's digest, or why it is unknown here (absent, not readable: a remote host's path).
    A file that exists but can never be a launch file (a device, a FIFO, too large) raises InputFileError."""
    try:
        with fileio.open_input(path, kind) as (_, st):
            pass  # the checks, and the key of the cache
        return FileDigest(_sha256(path, kind, st.st_size, st.st_mtime_ns), size=st.st_size)
    except fileio.InputFileError as err:
        if err.present:
            raise
        return FileDigest(None, "not found on this machine" if err.reason == "does not exist"
                          else f"not readable here: {err.reason}")


def launch_digests(spec: VmSpec, known: dict[str, FileDigest] | None = None) -> dict[str, FileDigest]:
    """Each launch file's digest; `known` ones (a pool volume's, from the image cache or read through libvirt)
    are taken as given, not read from the path, which is the host's."""
    files = {"firmware": spec.firmware, "kernel": spec.boot.kernel, "initrd": spec.boot.initrd}
    known = known or {}
    return {kind: known.get(kind) or file_digest(path, kind) for kind, path in files.items() if path}


@functools.lru_cache(maxsize=16)
def _firmware(path: str, size: int, mtime_ns: int) -> tuple[bytes, bytes]:
    """(image, LD after the firmware pages): the expensive part, shared by every spec using the file."""
    image = fileio.read_input(path, "firmware")
    return image, measure.firmware_seed(image)


def _firmware_image(path: str) -> tuple[bytes, bytes]:
    with fileio.open_input(path, "firmware") as (_, st):
        pass  # the checks, and the key of the cache
    try:
        return _firmware(path, st.st_size, st.st_mtime_ns)
    except fileio.InputFileError:
        raise
    except BadInputError as err:
        raise BadInputError(f"firmware {path}: {err.message}", err.hint) from None


@dataclass(frozen=True)
class Expected:
    """The expected MEASUREMENT, or why it is unknown, and the inputs it was computed from."""

    value: str | None
    reason: str | None
    vcpu_signature: int | None
    guest_features: int
    digests: dict[str, FileDigest] = field(default_factory=dict)
    firmware_ld: str | None = None  # LD after the firmware pages (sev-snp-measure's "ovmf hash")
    page_updates: int = 0


def measure_files(firmware: str, *, vcpus: int, signature: int, guest_features: int, kernel: str | None = None,
                  initrd: str | None = None, cmdline: str | None = None, firmware_ld: bytes | None = None,
                  digests: dict[str, FileDigest] | None = None) -> Expected:
    """Measure from files; an unreadable file or unsuitable firmware raises BadInputError naming it.
    `digests` (from launch_digests) saves hashing files the caller already hashed."""
    known = digests or {}
    paths = {"kernel": kernel, "initrd": initrd if kernel is not None else None, "firmware": firmware}
    needed = {kind: known.get(kind) or file_digest(path, kind) for kind, path in paths.items() if path is not None}
    # Kernel and initrd first: a spec's own boot files are the likelier ones to be missing here.
    for kind, digest in needed.items():
        if digest.sha256 is None:
            raise BadInputError(f"{kind} {paths[kind]}: {digest.reason}", f"give a readable copy of the {kind} file")
    image, seed = _firmware_image(firmware)
    hashes = None
    if kernel is not None:
        initrd_digest = needed.get("initrd")
        hashes = measure.KernelHashes.of(bytes.fromhex(needed["kernel"].sha256),
                                         bytes.fromhex(initrd_digest.sha256) if initrd_digest else None, cmdline)
    try:
        result = measure.measure(image, vcpus=vcpus, signature=signature, guest_features=guest_features,
                                 kernel_hashes=hashes, firmware_ld=firmware_ld if firmware_ld is not None else seed)
    except BadInputError as err:
        raise BadInputError(f"firmware {firmware}: {err.message}", err.hint) from None
    return Expected(result.hex, None, signature, guest_features, {**needed, **known},
                    (firmware_ld if firmware_ld is not None else seed).hex(), result.updates)


def spec_signature(spec: VmSpec) -> int:
    return spec.snp.vcpu_signature if spec.snp.vcpu_signature is not None else measure.vcpu_signature(spec.cpu_model)


def expected_measurement(spec: VmSpec, known: dict[str, FileDigest] | None = None) -> Expected:
    """For a spec: the value when every launch file is readable here (or `known`), otherwise 'unknown' and why."""
    features = spec.snp.guest_features
    digests = launch_digests(spec, known)
    try:
        signature = spec_signature(spec)
    except BadInputError as err:
        return Expected(None, err.message, None, features, digests)
    try:
        return measure_files(spec.firmware, vcpus=spec.vcpus, signature=signature, guest_features=features,
                             kernel=spec.boot.kernel if spec.snp.kernel_hashes else None,
                             initrd=spec.boot.initrd if spec.snp.kernel_hashes else None, cmdline=spec.boot.cmdline,
                             digests=digests)
    except fileio.InputFileError as err:
        if err.present:
            raise  # a device, FIFO or huge file is a wrong spec anywhere, not a file missing here
        return Expected(None, err.message, signature, features, digests)
    except (BadInputError, OSError) as err:
        reason = err.message if isinstance(err, BadInputError) else f"firmware {spec.firmware}: {err.strerror}"
        return Expected(None, reason, signature, features, digests)


@dataclass(frozen=True)
class IdBlocks:
    id_block: str  # base64, as libvirt takes it
    id_auth: str
    id_key_digest: str  # base64 SHA-384, as attestation reports carry it
    author_key_digest: str | None


@dataclass(frozen=True)
class LaunchRecord:
    """Everything measured about a launch that render puts into the domain."""

    expected: Expected
    id_blocks: IdBlocks | None = None


def id_blocks(spec: VmSpec, expected: Expected) -> IdBlocks:
    if expected.value is None:
        raise BadInputError(f"snp.id_key needs the expected measurement, which is unknown: {expected.reason}",
                            "make the launch files readable here (or copies at the same paths), or sign the ID "
                            "block elsewhere with snpvirt idblock and set snp.id_block/snp.id_auth")
    from snpvirt.launch import idblock  # cryptography: imported only when an ID key is used

    blocks = idblock.build(
        bytes.fromhex(expected.value), spec.snp.policy, idblock.load_private_key(spec.snp.id_key, "ID key"),
        idblock.load_private_key(spec.snp.author_key_file, "author key") if spec.snp.author_key_file else None,
        bytes.fromhex(spec.snp.family_id) if spec.snp.family_id else bytes(16),
        bytes.fromhex(spec.snp.image_id) if spec.snp.image_id else bytes(16), spec.snp.guest_svn)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return IdBlocks(b64(blocks.id_block), b64(blocks.id_auth), b64(blocks.id_key_digest),
                    b64(blocks.author_key_digest) if blocks.author_key_digest else None)


def record(spec: VmSpec, known: dict[str, FileDigest] | None = None) -> LaunchRecord:
    """Digests, expected measurement and ID blocks for a spec; raises only for an ID key that cannot work.
    `known`: digests of launch files that are pool volumes (kind -> FileDigest), not read from their paths."""
    expected = expected_measurement(spec, known)
    return LaunchRecord(expected, id_blocks(spec, expected) if spec.snp.id_key else None)


def host_guest_features(kernel_release: str | None, debug_swap: str | None) -> tuple[int, str] | None:
    """The guest features a local host's KVM gives SNP guests, when its facts say (docs/measurement.md §7.4).

    Upstream KVM from 6.11 (KVM_SEV_INIT2, which QEMU uses) sets SNPActive only: 0x1. Transitional
    kernels with kvm_amd debug_swap=Y add DebugSwap: 0x21.
    """
    import re

    match = re.match(r"(\d+)\.(\d+)", kernel_release or "")
    if not match:
        return None
    version = (int(match.group(1)), int(match.group(2)))
    if version >= (6, 11):
        return 0x1, f"host kernel {kernel_release} (>= 6.11: SNPActive only)"
    if debug_swap in ("Y", "1"):
        return 0x21, f"host kernel {kernel_release} with kvm_amd debug_swap={debug_swap} (SNPActive + DebugSwap)"
    return None
