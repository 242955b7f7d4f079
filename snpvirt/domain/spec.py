"""TOML spec -> VmSpec: the spec's table of keys, parsing, --set overrides, and the checks across keys.

The first problem found raises BadInputError naming the key (dotted path) and how to fix it. What a single
value may be (patterns, ranges, paths, SSH keys) is checked by domain/specvalues.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

try:  # tomli 2.3 is the standard library's TOML 1.0 parser as a compiled (mypyc) wheel: half the CPU per spec
    import tomli as tomllib
except ImportError:  # where no compiled wheel could be installed: the same parser, pure Python
    import tomllib

from snpvirt import fileio
from snpvirt import policy as snp_policy
from snpvirt.domain.specvalues import (BLOB_BYTES, BRIDGE_RE, CBITPOS_RANGE, DISK_SIZE_GIB_RANGE, HOSTNAME_RE, Key,
                                        MEMORY_MIB_RANGE, NAME_RE, REDUCED_PHYS_BITS_RANGE, _absolute_path,
                                        _base64_blob, _boot_file, _check_table, _cpu_model, _hex16, _in_range, _mac,
                                        _matches, _one_of, _policy, _pool_name, _ssh_keys, _text, _user, _uuid,
                                        _volume_name)
from snpvirt.errors import BadInputError, quoted
from snpvirt.models import VCPUS_RANGE, BootSpec, CloudInitSpec, DiskSpec, NetworkSpec, SnpSpec, VmSpec, VolumeRef


SCHEMA: dict[str, Any] = {
    "name": Key(str, True, _matches(NAME_RE, "a valid domain name",
                                    "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")),
    "uuid": Key(str, check=_uuid),
    "description": Key(str, check=_text),
    "memory_mib": Key(int, True, _in_range(*MEMORY_MIB_RANGE)),
    "vcpus": Key(int, True, _in_range(*VCPUS_RANGE)),
    "cpu_model": Key(str, check=_cpu_model),
    "firmware": Key(str, True, _absolute_path),
    "memory_backing": Key(str, check=_one_of("memfd", "default")),
    "state": Key(str, check=_one_of("running", "shutoff")),
    "autostart": Key(bool),
    "boot": {
        "kernel": Key((str, dict), check=_boot_file),
        "initrd": Key((str, dict), check=_boot_file),
        "cmdline": Key(str, check=_text),
    },
    "snp": {
        "policy": Key((dict, str, int), check=_policy),
        "kernel_hashes": Key(bool),
        "cbitpos": Key(int, check=_in_range(*CBITPOS_RANGE)),
        "reduced_phys_bits": Key(int, check=_in_range(*REDUCED_PHYS_BITS_RANGE)),
        "author_key": Key((bool, str)),  # true (with id_auth), or a P-384 PEM file that signs the ID key
        "vcek": Key(bool),
        "guest_features": Key(int, check=_in_range(0, 2 ** 64 - 1)),
        "vcpu_signature": Key(int, check=_in_range(0, 2 ** 32 - 1)),
        "id_key": Key(str, check=_absolute_path),
        "family_id": Key(str, check=_hex16),
        "image_id": Key(str, check=_hex16),
        "guest_svn": Key(int, check=_in_range(0, 2 ** 32 - 1)),
        **{blob: Key(str, check=_base64_blob(blob)) for blob in BLOB_BYTES},
    },
    "disks": [{
        "path": Key(str, check=_absolute_path),
        "pool": Key(str, check=_pool_name),
        "volume": Key(str, check=_volume_name),
        "size_gib": Key(int, check=_in_range(*DISK_SIZE_GIB_RANGE)),
        "backing": Key(str, check=_volume_name),
        "format": Key(str, check=_one_of("qcow2", "raw")),
        "readonly": Key(bool),
    }],
    "cloud_init": {
        "user": Key(str, check=_user),
        "ssh_authorized_keys": Key(list, check=_ssh_keys),
        "hostname": Key(str, check=_matches(HOSTNAME_RE, "a host name (RFC 1123)",
                                            "use letters, digits and '-' in dot-separated labels")),
        "user_data": Key(str, check=_absolute_path),
        "pool": Key(str, check=_pool_name),
    },
    "networks": [{
        "network": Key(str, check=_matches(NAME_RE, "a libvirt network name", "use the name shown by: virsh net-list --all")),
        "bridge": Key(str, check=_matches(BRIDGE_RE, "a bridge interface name", "use the host bridge's name, e.g. br0")),
        "mac": Key(str, check=_mac),
    }],
}

RUN_STATE_KEYS = ("state", "autostart")  # converged by apply, not rendered into the domain XML

def load_spec_text(text: str, origin: str = "spec") -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line L, column C)".
        raise BadInputError(f"{origin}: malformed TOML: {exc}", "fix the TOML syntax at that line and column") from None
    except RecursionError:  # tomllib reads nested arrays and inline tables recursively
        raise _too_deep(origin) from None
    except ValueError:  # tomllib's int() refuses numbers past Python's 4300-digit limit
        raise BadInputError(f"{origin}: malformed TOML: a number has thousands of digits",
                            "no spec value is that long: check the numbers in the spec") from None
    if _nesting_depth(raw) > MAX_NESTING:
        raise _too_deep(origin)
    return raw


# A spec nests 3 levels (snp.policy.smt, disks[0].path); deeper input is not a spec, and walking it
# recursively (deepcopy, json) would exhaust the stack.
MAX_NESTING = 16


def _too_deep(origin: str) -> BadInputError:
    return BadInputError(f"{origin}: tables or arrays nested more than {MAX_NESTING} levels deep",
                         "a spec nests at most 3 levels: see examples/")


def _nesting_depth(value: Any) -> int:
    """How deep tables and arrays nest (the depth of the deepest value, the document's being 0), walked
    level by level without recursion, and only through tables and arrays: most of a spec's values are
    scalars, and this runs per domain in bulk applies. Stops counting past MAX_NESTING + 1."""
    level, depth = [value] if isinstance(value, (dict, list)) else [], 0
    while depth <= MAX_NESTING:
        children = [child for node in level for child in (node.values() if isinstance(node, dict) else node)]
        if not children:
            return depth
        depth += 1
        level = [child for child in children if isinstance(child, (dict, list))]
        if not level:
            return depth
    return depth


def load_spec_file(path: str | Path) -> dict[str, Any]:
    return load_spec_text(fileio.read_text(path, "spec", "spec file"), str(path))


def _override_value(text: str) -> Any:
    """`--set k=v`: v is a TOML value when it parses as one (8, true, "x", {smt=true}), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (ValueError, RecursionError):  # TOMLDecodeError, too many digits, nested too deep: not a TOML value
        return text


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set KEY=VALUE` (dotted keys, numeric parts index arrays) to a copy of the raw spec."""
    if not assignments:
        return raw
    spec = copy.deepcopy(raw)
    for assignment in assignments:
        key, parts, text = _split_assignment(assignment)
        node: dict[str, Any] | list[Any] = spec
        for depth, part in enumerate(parts[:-1]):
            node = _descend(node, part, ".".join(parts[: depth + 1]))
        value = _override_value(text)
        if isinstance(node, list):
            node[_index(node, parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return spec


def check_assignments(assignments: list[str]) -> None:
    """The KEY=VALUE form of every --set, checked once before any spec is read (a usage error, not a spec's)."""
    for assignment in assignments:
        _split_assignment(assignment)


def _split_assignment(assignment: str) -> tuple[str, list[str], str]:
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise BadInputError(f"--set {quoted(assignment, key)} is not KEY=VALUE", "write it as --set vcpus=8 or --set snp.policy.smt=false")
    return key, parts, text


def _descend(node: dict[str, Any] | list[Any], part: str, where: str) -> dict[str, Any] | list[Any]:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    child = node.setdefault(part, {})
    if part == "policy" and isinstance(child, (str, int)) and not isinstance(child, bool):
        # A hex policy gains a named flag by turning into its table form first.
        value = snp_policy.parse_hex(child) if isinstance(child, str) else child
        fields = {k: v for k, v in snp_policy.to_fields(value).items() if v}
        if snp_policy.from_fields(fields) != value:
            raise BadInputError(f"--set: {where} {snp_policy.to_hex(value)} has bits no named flag expresses",
                                f"set the whole policy instead: --set {where}=0x30000")
        child = node[part] = fields
    if not isinstance(child, (dict, list)):
        raise BadInputError(f"--set: '{where}' is a value, not a table", f"set '{where}' itself, not a key inside it")
    return child


def _index(items: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise BadInputError(f"--set: '{where}' is not an existing array entry",
                            f"that array has {len(items)} entries, numbered from 0")
    return int(part)


def parse_spec(raw: dict[str, Any], allow_debug: bool = False) -> VmSpec:
    """Check a raw spec (from TOML) completely and build the VmSpec, or raise BadInputError."""
    checked = _check_table(raw, SCHEMA, "")
    boot = _boot(checked.get("boot", {}))
    if (boot.initrd or boot.initrd_volume or boot.cmdline) and not boot.direct:
        raise BadInputError("boot.initrd/boot.cmdline are set without boot.kernel",
                            "set boot.kernel for direct kernel boot, or remove boot.initrd and boot.cmdline")
    snp_raw = dict(checked.get("snp", {}))
    policy_value = snp_raw.pop("policy", snp_policy.DEFAULT_POLICY)
    problem = next(iter(snp_policy.problems(policy_value, allow_debug)), None)
    if problem:
        raise BadInputError(f"snp.policy: {problem.message}", problem.hint)
    kernel_hashes = snp_raw.pop("kernel_hashes", boot.direct)
    if kernel_hashes and not boot.direct:
        raise BadInputError("snp.kernel_hashes = true needs boot.kernel (measured direct kernel boot)",
                            "set boot.kernel, or set snp.kernel_hashes = false")
    if isinstance(snp_raw.get("author_key"), str):
        snp_raw["author_key_file"] = _absolute_path("snp.author_key", snp_raw.pop("author_key"))
        snp_raw["author_key"] = True
        if not snp_raw.get("id_key"):
            raise BadInputError("snp.author_key names a key file but snp.id_key is not set",
                                "the author key signs the ID key: set snp.id_key too")
    if snp_raw.get("id_key") and (snp_raw.get("id_block") or snp_raw.get("id_auth")):
        raise BadInputError("snp.id_key and snp.id_block/id_auth are both set",
                            "give the key (snpvirt signs the blocks) or the finished blocks, not both")
    if snp_raw.get("author_key") and not (snp_raw.get("id_auth") or snp_raw.get("author_key_file")):
        raise BadInputError("snp.author_key = true needs snp.id_auth (the author key signature lives there)",
                            "add snp.id_auth and snp.id_block, or name the key files: snp.id_key and snp.author_key")
    if snp_raw.get("id_auth") and not snp_raw.get("id_block"):
        raise BadInputError("snp.id_auth is set without snp.id_block", "add snp.id_block (96 bytes, base64)")
    if (snp_raw.get("family_id") or snp_raw.get("image_id") or snp_raw.get("guest_svn")) and not snp_raw.get("id_key"):
        raise BadInputError("snp.family_id/image_id/guest_svn go into the ID block, which needs snp.id_key",
                            "set snp.id_key (a P-384 PEM file), or remove them")
    snp = SnpSpec(policy=policy_value, kernel_hashes=kernel_hashes, **snp_raw)
    disks = tuple(_disk(i, d) for i, d in enumerate(checked.get("disks", [])))
    cloud_init = _cloud_init(checked["cloud_init"], checked["name"], len(disks)) if "cloud_init" in checked else None
    networks = []
    for i, net in enumerate(checked.get("networks", [])):
        if ("network" in net) == ("bridge" in net):
            raise BadInputError(f"networks[{i}]: give exactly one of 'network' or 'bridge'",
                                'network = "default" for a libvirt network, bridge = "br0" for a host bridge')
        networks.append(NetworkSpec(**net))
    top = {k: v for k, v in checked.items() if k not in ("boot", "snp", "disks", "networks", "cloud_init")}
    top.setdefault("cpu_model", "EPYC-v4")
    top.setdefault("memory_backing", "memfd")
    # The run state is not part of the definition: changing it never redefines (or restarts) a domain,
    # so it stays out of the source that the definition's digest and metadata are made from.
    source = {k: v for k, v in raw.items() if k not in RUN_STATE_KEYS}
    return VmSpec(boot=boot, snp=snp, disks=disks, networks=tuple(networks), cloud_init=cloud_init, source=source, **top)


def _boot(checked: dict[str, Any]) -> BootSpec:
    """Split each boot file into its host path or its pool volume (resolved to a path by the host later)."""
    files: dict[str, Any] = {}
    for kind in ("kernel", "initrd"):
        value = checked.get(kind)
        files[f"{kind}_volume" if isinstance(value, VolumeRef) else kind] = value
    return BootSpec(cmdline=checked.get("cmdline"), **files)


def _disk(index: int, disk: dict[str, Any]) -> DiskSpec:
    """A host file (path) or a pool volume (pool + volume), and what apply may create for the latter."""
    where = f"disks[{index}]"
    if ("path" in disk) == ("pool" in disk or "volume" in disk):
        raise BadInputError(f"{where}: give either 'path' or 'pool' and 'volume'",
                            'path = "/var/lib/libvirt/images/x.qcow2" for a host file, '
                            'pool = "default" and volume = "x.qcow2" for a volume in a storage pool')
    if ("pool" in disk) != ("volume" in disk):
        missing = "volume" if "pool" in disk else "pool"
        raise BadInputError(f"{where}: '{missing}' is missing", f"a pool disk names both: add {where}.{missing}")
    for key in ("size_gib", "backing"):
        if key in disk and "pool" not in disk:
            raise BadInputError(f"{where}.{key} needs 'pool' and 'volume'",
                                "snpvirt creates only pool volumes; for a host file, create it yourself (qemu-img create)")
    if "backing" in disk and disk.get("format", "qcow2") != "qcow2":
        raise BadInputError(f"{where}.backing needs format qcow2", "an overlay on a backing image is a qcow2 file: "
                            f"remove {where}.format or set it to qcow2")
    if "backing" in disk and disk["backing"] == disk["volume"]:
        raise BadInputError(f"{where}.backing names the disk's own volume", "name the image volume the disk starts from")
    return DiskSpec(target=_disk_target(index), **disk)


def _cloud_init(checked: dict[str, Any], name: str, disk_count: int) -> CloudInitSpec:
    """The seed's contents: a user with keys, or a user-data file used as is (never both), and a host name."""
    if "user_data" in checked and ("user" in checked or "ssh_authorized_keys" in checked):
        raise BadInputError("cloud_init.user_data is used as is: cloud_init.user/ssh_authorized_keys cannot be added to it",
                            "put the user and its keys into the user-data file, or drop user_data")
    if ("user" in checked) != bool(checked.get("ssh_authorized_keys")):
        raise BadInputError("cloud_init.user and cloud_init.ssh_authorized_keys go together",
                            "the user logs in with its keys (its password is locked): give both")
    hostname = checked.get("hostname")
    if hostname is None:
        if not HOSTNAME_RE.fullmatch(name) or "_" in name:
            raise BadInputError(f"cloud_init.hostname: the domain name {name!r} is not a host name",
                                "set cloud_init.hostname (letters, digits and '-')")
        hostname = name
    return CloudInitSpec(hostname=hostname, target=_disk_target(disk_count), pool=checked.get("pool", "default"),
                         user=checked.get("user"), ssh_authorized_keys=checked.get("ssh_authorized_keys", ()),
                         user_data=checked.get("user_data"))


def _disk_target(index: int) -> str:
    if index >= 26:
        raise BadInputError("too many disks: at most 26 (vda..vdz, the cloud-init seed counted)", "attach fewer disks")
    return "vd" + chr(ord("a") + index)


def load_spec(path: str | Path, overrides: list[str] | None = None, allow_debug: bool = False) -> VmSpec:
    return parse_spec(apply_overrides(load_spec_file(path), overrides or []), allow_debug)
