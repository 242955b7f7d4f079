"""The fleet file (TOML): settings, hosts and domains, checked like a spec (one clear error per problem,
naming the dotted key); spec paths are relative to the fleet file, `count` expands `db` to db-1..db-N."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from snpvirt import fileio
from snpvirt.domain import spec as specs
from snpvirt.domain import specvalues as values
from snpvirt.errors import BadInputError, SnpvirtError
from snpvirt.models import VmSpec

# The spec's own checks (specvalues) read the fleet file too (its Key table and its helpers): the same strictness,
# the same one-line errors naming the dotted key.
Key = values.Key
MAX_COUNT = 1000  # copies of one [[domains]] entry
MAX_DOMAINS = 50_000  # in all: a hundred hosts full of SNP guests (~500 ASIDs each); a file cannot ask for millions
MAX_LABEL_TEXT = 128


@dataclass(frozen=True)
class FleetSettings:
    name: str
    parallel_hosts: int = 8  # hosts worked on at once
    per_host: int = 2  # operations at once on one host
    connect_timeout_s: float = 15.0
    keepalive_interval_s: int = 5  # a host that misses keepalive_count answers is abandoned
    keepalive_count: int = 3


@dataclass(frozen=True)
class HostEntry:
    name: str
    uri: str
    labels: dict[str, str] = field(default_factory=dict)
    reserve_memory_mib: int = 0  # kept free for the host itself
    snp_guests: int | None = None  # overrides libvirt's maxESGuests (ciphertext hiding, or a driver without it)
    # libvirt's test driver only (tests, demos), as --sysroot/--host-caps: a captured host its gate judges
    sysroot: str | None = None
    host_caps: str | None = None
    free_memory_mib: int | None = None  # instead of the test driver's fixed 3 GiB


@dataclass(frozen=True)
class DomainEntry:
    """One domain the fleet wants: a copy of a [[domains]] entry's spec, renamed and owned by the fleet."""

    spec: VmSpec
    group: int  # index of its [[domains]] entry: copies of one entry are what `spread` keeps apart
    spec_path: str
    pin: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    spread: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.spec.state == "running"


@dataclass(frozen=True)
class Fleet:
    settings: FleetSettings
    hosts: tuple[HostEntry, ...]
    domains: tuple[DomainEntry, ...]
    path: str

    @property
    def name(self) -> str:
        return self.settings.name

    def host(self, name: str) -> HostEntry:
        return next(h for h in self.hosts if h.name == name)


def _name(what: str):
    return values._matches(values.NAME_RE, what, "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _labels(path: str, value: dict[str, Any]) -> dict[str, str]:
    for key, text in value.items():
        values._expect_type(f"{path}.{key}", text, str)
        if not values.NAME_RE.fullmatch(key) or len(text) > MAX_LABEL_TEXT or values._TEXT_FORBIDDEN_RE.search(text):
            raise BadInputError(f"{path}.{key}: not a label (names: letters, digits, '.', '_', '-'; "
                                f"values: text up to {MAX_LABEL_TEXT} characters)", 'write labels as { rack = "r1" }')
    return dict(value)


def _uri(path: str, value: str) -> str:
    if not value or values._PATH_FORBIDDEN_RE.search(value) or len(value) > 1024:
        raise BadInputError(f"{path}: not a libvirt URI", 'write it as libvirt does, e.g. "qemu+ssh://root@host1/system"')
    try:
        password = urlsplit(value).password
    except ValueError:
        raise BadInputError(f"{path}: not a libvirt URI", 'write it as libvirt does, e.g. "qemu+ssh://root@host1/system"') from None
    if password is not None:  # the value is not repeated: it holds a secret
        raise BadInputError(f"{path}: the URI holds a password; a fleet file holds no secrets",
                            "let libvirt authenticate: SSH keys (qemu+ssh://), TLS certificates (qemu+tls://) or SASL")
    if _runs_local_program(value):
        raise BadInputError(f"{path}: the URI makes libvirt run a program on this machine (the ext transport, or "
                            "a 'command' parameter); a fleet file is data and runs nothing",
                            "use qemu+ssh://, qemu+tls:// or qemu+tcp:// (ssh's options go in ~/.ssh/config)")
    return value


def _runs_local_program(uri: str) -> bool:
    """libvirt's ext transport runs `command`, and ssh runs it in place of ssh."""
    if urlsplit(uri).scheme.lower().partition("+")[2] == "ext":
        return True
    return "command" in _params(uri)


def _params(uri: str) -> dict[str, str]:
    """The URI's parameters, names unescaped and without case as libvirt reads them (virURIParseParams).
    Split at every ';' and '&' (libvirt splits at ';' only where no '&' follows: every name it sees is one here)."""
    pairs = (item.partition("=") for item in urlsplit(uri).query.replace(";", "&").split("&") if item)
    return {_unescaped(name).strip().lower(): _unescaped(value).strip() for name, _, value in pairs}


def _unescaped(text: str) -> str:
    """A parameter's name or value as libvirt's C code reads it: unescaped, and ending at the first NUL, so
    'command%00x' is the parameter 'command' (libvirt runs it) and 'no_verify%00x=1' is no_verify."""
    return unquote_to_bytes(text).partition(b"\0")[0].decode("utf-8", "replace")


def identity_unchecked(uri: str) -> str | None:
    """The parameter with which libvirt connects without checking who answers, or None: no_verify=1 (the
    host's TLS certificate; over ssh, its host key: StrictHostKeyChecking=no), known_hosts_verify=ignore (the
    host key, over libssh and libssh2, which read that parameter and not no_verify)."""
    params = _params(uri)
    if params.get("no_verify", "0") not in ("", "0"):
        return f"no_verify={params['no_verify']}"
    if params.get("known_hosts_verify", "").lower() == "ignore":
        return "known_hosts_verify=ignore"
    return None


def _seconds(path: str, value: float) -> float:
    if not 0 < value <= 3600:
        raise BadInputError(f"{path}: {values.shown_number(value)} is out of range (more than 0, at most 3600 seconds)",
                            f"set {path} to e.g. 15")
    return float(value)


SCHEMA: dict[str, Any] = {
    "fleet": {
        "name": Key(str, check=_name("a fleet name")),
        "parallel_hosts": Key(int, check=values._in_range(1, 256)),
        "per_host": Key(int, check=values._in_range(1, 64)),
        "connect_timeout_s": Key((int, float), check=_seconds),
        "keepalive_interval_s": Key(int, check=values._in_range(1, 600)),
        "keepalive_count": Key(int, check=values._in_range(1, 100)),
    },
    "hosts": [{
        "name": Key(str, check=_name("a host name")),
        "uri": Key(str, check=_uri),
        "labels": Key(dict, check=_labels),
        "reserve_memory_mib": Key(int, check=values._in_range(0, 64 * 1024 * 1024)),
        "snp_guests": Key(int, check=values._in_range(0, 1 << 20)),
        "sysroot": Key(str),
        "host_caps": Key(str),
        "free_memory_mib": Key(int, check=values._in_range(0, 64 * 1024 * 1024)),
    }],
    "domains": [{
        "spec": Key(str),
        "count": Key(int, check=values._in_range(1, MAX_COUNT)),
        "host": Key(str),
        "labels": Key(dict, check=_labels),
        "spread": Key(str, check=_name("a label name")),
        "state": Key(str, check=values._one_of("running", "shutoff")),
    }],
}
_REQUIRED = {"": ("fleet", "hosts", "domains"), "fleet": ("name",), "hosts": ("name", "uri")}


def load_fleet(path: str | Path, allow_debug: bool = False) -> Fleet:
    """Read and check a fleet file and every spec it names; BadInputError on the first problem."""
    path = Path(path)
    raw = specs.load_spec_text(fileio.read_text(path, "spec", "fleet file"), str(path))
    return parse_fleet(raw, path, allow_debug)


def parse_fleet(raw: dict[str, Any], path: Path, allow_debug: bool = False) -> Fleet:
    try:
        checked = values._check_table(raw, SCHEMA, "")
    except BadInputError as err:
        raise BadInputError(f"{path}: {err.message}", err.hint.replace("the spec", "the fleet file")) from None
    _require(checked, "", path)
    _require(checked["fleet"], "fleet", path)
    settings = FleetSettings(**checked["fleet"])
    hosts = tuple(_host(i, h, path) for i, h in enumerate(checked["hosts"]))
    if not hosts:
        raise BadInputError(f"{path}: hosts: no host", 'add one: [[hosts]] name = "h1" uri = "qemu+ssh://root@h1/system"')
    _unique([h.name for h in hosts], "hosts", "host", path)
    _one_entry_per_daemon(hosts, path)
    domains: list[DomainEntry] = []
    for i, entry in enumerate(checked["domains"]):
        if len(domains) + entry.get("count", 1) > MAX_DOMAINS:  # checked before the copies are made
            raise BadInputError(f"{path}: domains[{i}]: the fleet would have more than {MAX_DOMAINS} domains",
                                "split it into several fleets, or lower count")
        domains.extend(_domains(i, entry, settings.name, {h.name for h in hosts}, path, allow_debug))
    _unique([d.name for d in domains], "domains", "domain", path)
    return Fleet(settings, hosts, tuple(domains), str(path))


def _require(table: dict[str, Any], where: str, path: Path) -> None:
    for key in _REQUIRED[where]:
        if key not in table:
            raise BadInputError(f"{path}: missing required key '{where + '.' if where else ''}{key}'",
                                "see the fleet file in the README ('Fleets') and examples/fleet.toml")


def _host(i: int, raw: dict[str, Any], path: Path) -> HostEntry:
    for key in _REQUIRED["hosts"]:
        if key not in raw:
            raise BadInputError(f"{path}: missing required key 'hosts[{i}].{key}'",
                                "each [[hosts]] needs a name and a libvirt uri")
    captured = {key: str(path.parent / raw[key]) for key in ("sysroot", "host_caps") if key in raw}  # relative to the file
    return HostEntry(**{**raw, **captured})


def _domains(i: int, raw: dict[str, Any], fleet: str, host_names: set[str], path: Path,
             allow_debug: bool) -> list[DomainEntry]:
    if "spec" not in raw:
        raise BadInputError(f"{path}: missing required key 'domains[{i}].spec'",
                            'name the spec file, relative to the fleet file: spec = "vms/db.toml"')
    if raw.get("host") is not None and raw["host"] not in host_names:
        raise BadInputError(f"{path}: domains[{i}].host: no host named {raw['host']!r} in this fleet",
                            f"pin to one of: {', '.join(sorted(host_names))}")
    spec_path = path.parent / raw["spec"]
    try:
        spec = specs.load_spec(spec_path, allow_debug=allow_debug)
    except SnpvirtError as err:
        raise BadInputError(f"{path}: domains[{i}].spec {raw['spec']}: {err.message}", err.hint) from None
    count = raw.get("count")
    if count is not None and spec.uuid is not None:
        raise BadInputError(f"{path}: domains[{i}]: count = {count} with a spec that sets uuid",
                            "copies cannot share a UUID: remove uuid from the spec")
    names = [spec.name] if count is None else [f"{spec.name}-{n}" for n in range(1, count + 1)]
    for name in names:
        if not values.NAME_RE.fullmatch(name):
            raise BadInputError(f"{path}: domains[{i}]: {name!r} is too long for a domain name (64 characters at most)",
                                "shorten the spec's name, or lower count")
    return [DomainEntry(_owned(spec, name, fleet, raw.get("state")), i, str(spec_path), raw.get("host"),
                        raw.get("labels", {}), raw.get("spread")) for name in names]


def _owned(spec: VmSpec, name: str, fleet: str, state: str | None) -> VmSpec:
    """The spec renamed (its recorded source too, so each copy has its own digest), owned by the fleet."""
    return dataclasses.replace(spec, name=name, fleet=fleet, state=state or spec.state,
                               source={**spec.source, "name": name})


def _one_entry_per_daemon(hosts: tuple[HostEntry, ...], path: Path) -> None:
    """Two [[hosts]] with one URI are one libvirt daemon seen twice: its SNP slots and memory would be
    counted twice, and a domain could be placed on it under each name."""
    first: dict[str, str] = {}
    for host in hosts:
        if host.uri in first:
            raise BadInputError(f"{path}: hosts: {first[host.uri]} and {host.name} have the same uri",
                                "list each libvirt host once")
        first[host.uri] = host.name


def _unique(names: list[str], where: str, what: str, path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInputError(f"{path}: {where}: two {what}s named {name}",
                                f"give each {what} its own name" + (" (copies are named NAME-1..NAME-N)" if what == "domain" else ""))
        seen.add(name)
