"""What one value of a spec may be: the patterns, ranges and checks each key's value goes through.

domain/spec.py holds the spec's tables (which key takes which check), reads the TOML and applies --set;
this module holds the checks themselves. Each check takes the dotted key and the value and returns the
normalised value, or raises BadInputError naming the key and how to fix it. The fleet file reuses them.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Callable

from snpvirt import policy as snp_policy
from snpvirt.errors import NOT_REPEATED, BadInputError, quoted
from snpvirt.launch import measure
from snpvirt.models import VolumeRef

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


def shown_number(value: int | float) -> int | float | str:
    """A number as an error message shows it. TOML hex literals have no length limit, and str() refuses an
    int past 4300 decimal digits (a ValueError): those are described by their size."""
    return value if isinstance(value, float) or value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"


def _in_range(lo: int, hi: int) -> Callable[[str, Any], Any]:
    def check(path: str, value: int) -> int:
        if not lo <= value <= hi:
            raise _fail(path, f"{shown_number(value)} is out of range {lo}..{hi}", f"set {path} to a value from {lo} to {hi}")
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


# --- tables of keys: types, unknown keys, required keys ---

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
