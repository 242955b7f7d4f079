"""TOML spec -> VmSpec: parsing, --set overrides, and every check a value needs before rendering.

The first problem found raises BadInputError naming the key (dotted path) and how to fix it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import difflib
import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:  # tomli 2.3 is the standard library's TOML 1.0 parser as a compiled (mypyc) wheel: half the CPU per spec
    import tomli as tomllib
except ImportError:  # where no compiled wheel could be installed: the same parser, pure Python
    import tomllib

from snpvirt import fileio
from snpvirt.launch import measure
from snpvirt import policy as snp_policy
from snpvirt.errors import NOT_REPEATED, BadInputError, quoted
from snpvirt.models import VCPUS_RANGE, BootSpec, CloudInitSpec, DiskSpec, NetworkSpec, SnpSpec, VmSpec, VolumeRef

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAC_RE = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")
# An interface's own address is unicast: the first byte even (libvirt's schema, uniMacAddr, says the same).
UNICAST_MAC_RE = re.compile(r"[0-9a-fA-F][02468aAcCeE](:[0-9a-fA-F]{2}){5}")
BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")  # Linux interface names: at most 15 chars
# A volume's name is its file name in a dir pool: no path separator, no leading '.' or '-' (no "..", no option).
VOLUME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
DISK_SIZE_GIB_RANGE = (1, 64 * 1024)  # 64 TiB: qcow2's own limit is far above, a typo like 20000000 is not
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, 253 characters at most.
HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# A Linux user name as useradd takes it by default (NAME_REGEX), at most 32 characters.
USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
MEMORY_MIB_RANGE = (128, 4 * 1024 * 1024)
# The C-bit is a physical address bit (51 on Milan and Genoa), and at most 63 bits can be lost to it.
CBITPOS_RANGE = (1, 63)
REDUCED_PHYS_BITS_RANGE = (0, 63)
# Decoded sizes fixed by the SNP_LAUNCH_* firmware commands (docs/snp-facts.md §3).
BLOB_BYTES = {"host_data": 32, "guest_visible_workarounds": 16, "id_block": 96, "id_auth": 4096}
# One regex search instead of a Python loop per character (a spec is checked per domain, in bulk applies too).
# Control characters, and what XML 1.0 cannot carry at all (lone surrogates, e.g. from --set with bytes
# that are not UTF-8; U+FFFE, U+FFFF): the path goes into the domain XML.
_PATH_FORBIDDEN_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# XML 1.0 cannot carry these; carriage returns every parser turns into line feeds.
_TEXT_FORBIDDEN_RE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Key:
    """One spec key: its TOML type, and an optional check returning the normalised value."""

    kind: type | tuple[type, ...]
    required: bool = False
    check: Callable[[str, Any], Any] | None = None


def _fail(path: str, message: str, hint: str) -> BadInputError:
    return BadInputError(f"{path}: {message}", hint)


def _in_range(lo: int, hi: int) -> Callable[[str, Any], Any]:
    def check(path: str, value: int) -> int:
        if not lo <= value <= hi:
            # TOML hex literals have no length limit, and str() refuses past 4300 digits: describe those.
            shown = value if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"
            raise _fail(path, f"{shown} is out of range {lo}..{hi}", f"set {path} to a value from {lo} to {hi}")
        return value
    return check


def _one_of(*choices: str) -> Callable[[str, Any], Any]:
    def check(path: str, value: str) -> str:
        if value not in choices:
            raise _fail(path, f"{quoted(value, path)} is not one of {', '.join(choices)}", f"set {path} to one of: {', '.join(choices)}")
        return value
    return check


def _matches(pattern: re.Pattern[str], what: str, hint: str) -> Callable[[str, Any], Any]:
    def check(path: str, value: str) -> str:
        if not pattern.fullmatch(value):
            raise _fail(path, f"{quoted(value, path)} is not {what}", hint)
        return value
    return check


def _absolute_path(path: str, value: str) -> str:
    # "/" alone names a folder, never a file (libvirt's schema, absFilePath, wants a character after it).
    if not value.startswith("/") or len(value) < 2 or _PATH_FORBIDDEN_RE.search(value):
        shown = quoted(value, path)
        hint = (f"{path} takes the path of a file, not its content: save the key in a file only root can read, give that path"
                if shown == NOT_REPEATED else f"give {path} as an absolute path such as /var/lib/snpvirt/vm/file")
        why = ("" if shown == NOT_REPEATED or not value.startswith("/") else " (it is the root folder)" if value == "/"
               else " (it contains a control character, or one XML cannot carry)")
        raise _fail(path, f"{shown} is not an absolute file path{why}", hint)
    return value


def host_path(where: str, value: str) -> str:
    """A file path the host reports (a pool volume's), held to the spec's rule for paths: it goes into the
    domain XML that apply defines without running libvirt's schema, so a host's odd answer must not slip in."""
    return _absolute_path(where, value)


def _text(path: str, value: str) -> str:
    """Free text goes into XML: reject control characters XML 1.0 cannot carry, and carriage
    returns, which every XML parser turns into line feeds (the value would silently change)."""
    if _TEXT_FORBIDDEN_RE.search(value):
        raise _fail(path, "contains control characters", f"remove them from {path}")
    return value


def _mac(path: str, value: str) -> str:
    hint = "write it as 52:54:00:xx:xx:xx (libvirt's own prefix, a unicast address)"
    if not MAC_RE.fullmatch(value):
        raise _fail(path, f"{quoted(value, path)} is not a MAC address", hint)
    if not UNICAST_MAC_RE.fullmatch(value):  # a multicast address: no network card answers to it alone
        raise _fail(path, f"{value} is a multicast address (the first byte is odd), not one network card's", hint)
    return value


def _uuid(path: str, value: str) -> str:
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise _fail(path, f"{quoted(value, path)} is not a UUID", "use the form 8-4-4-4-12 hex digits, or leave it out and libvirt picks one") from None


def _base64_blob(key: str) -> Callable[[str, Any], Any]:
    size = BLOB_BYTES[key]

    def check(path: str, value: str) -> str:
        try:
            # validate=True: RFC 4648 strictness, a stray character is an error and not dropped.
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(path, "is not valid base64 (RFC 4648: only A-Z a-z 0-9 + / and = padding)",
                        f"encode the {size} bytes with: base64 -w0 FILE") from None
        if len(decoded) != size:
            raise _fail(path, f"decodes to {len(decoded)} bytes, SEV-SNP needs exactly {size}",
                        f"give the base64 of a {size}-byte value")
        return value
    return check


def _cpu_model(path: str, value: str) -> str:
    """A model from the measurement's table (or host-passthrough): what libvirt runs is what snpvirt measures."""
    if value in measure.CPU_MODELS or value == measure.HOST_PASSTHROUGH:
        return value
    message, hint = measure.cpu_model_error(value, f"{path}:", "host-passthrough with snp.vcpu_signature (the host CPU's signature)")
    raise BadInputError(message, hint)


def _hex16(path: str, value: str) -> str:
    try:
        if len(bytes.fromhex(value)) == 16:
            return value.lower()
    except ValueError:
        pass
    raise _fail(path, f"{quoted(value, path)} is not 16 bytes of hex", "write it as 32 hex digits")


def _policy(path: str, value: Any) -> int:
    if isinstance(value, dict):
        unknown = [k for k in value if k not in snp_policy.FIELDS]
        if unknown:
            raise _unknown_key(f"{path}.{unknown[0]}", unknown[0], snp_policy.FIELDS)
        for flag, setting in value.items():
            expected = int if flag.startswith("abi_") else bool
            _expect_type(f"{path}.{flag}", setting, expected)
        return snp_policy.from_fields(value)
    if isinstance(value, str):
        return snp_policy.parse_hex(value)
    return value  # an int


def _boot_file(path: str, value: str | dict[str, Any]) -> str | VolumeRef:
    """boot.kernel/initrd: an absolute host path, or { pool = "...", volume = "..." } in a storage pool."""
    if isinstance(value, str):
        return _absolute_path(path, value)
    checked = _check_table(value, VOLUME_REF, f"{path}.")
    return VolumeRef(checked["pool"], checked["volume"])


# Key types an SSH public key line may start with (plain keys, not certificates), and how many length-prefixed
# fields their key blob holds after the type (RFC 4253 §6.6, RFC 5656 §3.1, RFC 8709 §4, OpenSSH PROTOCOL.u2f).
SSH_KEY_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2,
                  "ecdsa-sha2-nistp521": 2, "sk-ssh-ed25519@openssh.com": 2, "sk-ecdsa-sha2-nistp256@openssh.com": 3}
SSH_KEY_TYPES = tuple(SSH_KEY_FIELDS)
MAX_SSH_KEYS = 64


def _ssh_blob_fields(blob: bytes) -> list[bytes] | None:
    """The length-prefixed strings of an SSH key blob, or None when they do not fill it exactly."""
    fields, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            return None
        size = int.from_bytes(blob[offset:offset + 4], "big")
        offset += 4
        if offset + size > len(blob):
            return None
        fields.append(blob[offset:offset + size])
        offset += size
    return fields


def _ssh_public_key(path: str, value: Any) -> str:
    """One line of authorized_keys without options: TYPE BASE64 [COMMENT], the blob naming the same type.
    A private key, a key with options (command=...), or two keys in one string are refused."""
    hint = "give the one line of a public key file, e.g. the content of ~/.ssh/id_ed25519.pub"
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {_describe(value)}", hint)
    if "PRIVATE KEY" in value:
        raise _fail(path, "is a private key", "never put a private key in a spec: give the .pub file's line")
    parts = value.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES or _TEXT_FORBIDDEN_RE.search(value) or "\n" in value.strip():
        raise _fail(path, f"{quoted(value, path)} is not an SSH public key ({', '.join(SSH_KEY_TYPES[:3])}, ...)", hint)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise _fail(path, "its key part is not valid base64", hint) from None
    fields = _ssh_blob_fields(blob)
    # The blob starts with its own type and holds exactly the type's fields: a truncated or mixed-up key does not.
    if not fields or fields[0] != parts[0].encode() or len(fields) != 1 + SSH_KEY_FIELDS[parts[0]]:
        raise _fail(path, f"the key data is not a {parts[0]} key (damaged or truncated?)", hint)
    return " ".join(parts)


def _ssh_keys(path: str, value: list[Any]) -> tuple[str, ...]:
    if len(value) > MAX_SSH_KEYS:
        raise _fail(path, f"{len(value)} keys, at most {MAX_SSH_KEYS}", "give fewer keys")
    return tuple(_ssh_public_key(f"{path}[{i}]", key) for i, key in enumerate(value))


def _user(path: str, value: str) -> str:
    _matches(USER_RE, "a Linux user name", "use lowercase letters, digits, '_' or '-', starting with a letter")(path, value)
    if value == "root":
        raise _fail(path, "'root' is refused", "name an ordinary user: cloud-init gives it sudo rights")
    return value


_volume_name = _matches(VOLUME_RE, "a volume name (a file name: no '/', not starting with '.' or '-')",
                        "use up to 128 letters, digits, '.', '_', '+' or '-', starting with a letter or digit")
_pool_name = _matches(NAME_RE, "a storage pool name", "use the name shown by: virsh pool-list --all")

VOLUME_REF: dict[str, Any] = {"pool": Key(str, True, _pool_name), "volume": Key(str, True, _volume_name)}

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

TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "a table", list: "an array of tables"}


def _expect_type(path: str, value: Any, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if type(value) in kinds:  # the usual case, exactly (type(True) is bool, never int)
        return
    # bool is a subclass of int in Python; TOML keeps them apart, so do we.
    ok = any(isinstance(value, k) and not (k is int and isinstance(value, bool)) for k in kinds)
    if not ok:
        wanted = " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise _fail(path, f"expected {wanted}, got {_describe(value)}", f"write {path} as {wanted}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for k, label in TYPE_NAMES.items():
        if isinstance(value, k):
            return label
    return type(value).__name__


def _unknown_key(path: str, key: str, valid: Any) -> BadInputError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(valid))}"
    return BadInputError(f"unknown key '{path}'", hint)


def _check_table(raw: dict[str, Any], schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Type-check and normalise `raw` against `schema`; returns the checked values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise _unknown_key(path, key, schema)
        rule = schema[key]
        if type(rule) is Key:  # the usual case first: a spec is checked per domain, in bulk applies too
            if type(value) is not rule.kind:  # exactly the type (bool is never an int here): no call
                _expect_type(path, value, rule.kind)
            out[key] = rule.check(path, value) if rule.check else value
        elif isinstance(rule, dict):
            _expect_type(path, value, dict)
            out[key] = _check_table(value, rule, f"{path}.")
        else:
            _expect_type(path, value, list)
            items = []
            for i, item in enumerate(value):
                _expect_type(f"{path}[{i}]", item, dict)
                items.append(_check_table(item, rule[0], f"{path}[{i}]."))
            out[key] = items
    for key in _required_keys(schema):
        if key not in raw:
            raise BadInputError(f"missing required key '{prefix}{key}'", f"add {prefix}{key} to the spec (see README, 'The spec')")
    return out


_REQUIRED: dict[int, tuple[str, ...]] = {}  # id(schema table) -> its required keys; the tables live as long as the module


def _required_keys(schema: dict[str, Any]) -> tuple[str, ...]:
    keys = _REQUIRED.get(id(schema))
    if keys is None:
        keys = _REQUIRED[id(schema)] = tuple(k for k, rule in schema.items() if isinstance(rule, Key) and rule.required)
    return keys


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
