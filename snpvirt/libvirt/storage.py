"""libvirt storage pools and volumes: the only way snpvirt puts files on a host.

Volumes travel over libvirt's own connection (virStorageVol upload/download streams), so a remote
URI gets its images with no scp and no shared filesystem. Every call is bounded: the connection runs
libvirt's keepalive (a peer that stops answering fails the call within about 20 s, whatever the call
waits for), and stream transfers also stop when the caller's progress callback raises.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import libvirt

from snpvirt import fileio
from snpvirt.errors import BadInputError, ConflictError, ConnectionFailedError, NotFoundError, SnpvirtError
from snpvirt.libvirt import events
from snpvirt.libvirt.connection import Connection, translate

DEFAULT_POOL = "default"
DEFAULT_POOL_DIR = "/var/lib/snpvirt/images"
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3  # no answer to 3 probes 5 s apart: the peer is gone, the call fails
CHUNK = 1 << 20  # bytes per stream send/recv: big enough to keep the link busy, small for progress
Progress = Callable[[int, int], None]  # (bytes done, bytes in all); may raise to stop the transfer


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    capacity: int  # bytes the guest sees (a qcow2's virtual size)
    allocation: int  # bytes it takes on the host
    format: str  # "qcow2", "raw", ... as libvirt sees the file
    physical: int = 0  # the file's own size in bytes (what an upload sent, what a download sends)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "capacity_bytes": self.capacity,
                "allocation_bytes": self.allocation, "physical_bytes": self.physical, "format": self.format}


@dataclass(frozen=True)
class PoolInfo:
    name: str
    path: str
    created: bool  # this call defined it


def _error(exc: libvirt.libvirtError, action: str, uri: str | None) -> SnpvirtError:
    """Storage errors by code; everything else as the connection translates it."""
    code = exc.get_error_code()
    detail = (exc.get_error_message() or str(exc)).strip()
    if code == libvirt.VIR_ERR_NO_STORAGE_POOL:
        return NotFoundError(f"{action}: {detail}", "list the pools with: virsh pool-list --all")
    if code == libvirt.VIR_ERR_NO_STORAGE_VOL:
        return NotFoundError(f"{action}: {detail}", "list the volumes with: virsh vol-list POOL")
    if code in (libvirt.VIR_ERR_STORAGE_VOL_EXIST, libvirt.VIR_ERR_STORAGE_POOL_BUILT):
        return ConflictError(f"{action}: {detail}", "choose another name, or delete the existing one first")
    if exc.get_error_domain() == libvirt.VIR_FROM_RPC:  # keepalive gave up, the socket closed: not a libvirt bug
        return ConnectionFailedError(f"{action}: {detail}", "check that the host and its libvirtd answer, then run "
                                                            "the command again")
    return translate(exc, action, uri)


def connect(uri: str | None) -> Storage:
    """A Storage over a new connection with keepalive on (libvirt needs its event loop for that, and it
    must be registered before the connection opens). Close it with .close() or use `with`."""
    events.start_event_loop()
    return Storage(Connection(uri), owned=True)


def connect_beside(uri: str, domains: Connection) -> Storage:
    """A Storage over `uri`, a second connection to the host that `domains` is connected to: for a domains'
    driver without usable storage of its own (libvirt's test driver simulates its pools; they take no upload).
    The domain XML gets the volumes' paths, which mean something only on the domains' host: two connections
    whose libvirtd report different host names are refused. (The same name does not prove the same host,
    two hosts may share one; through one daemon, both connections always report the same.)"""
    store = connect(uri)
    theirs, ours = domains.hostname(), store._connection.hostname()
    if theirs is not None and ours is not None and theirs != ours:
        store.close()
        where = domains.uri or "libvirt's default URI"
        raise BadInputError(f"the storage connection {uri} reaches host {ours}, the domains' connection {where} "
                            f"host {theirs}: the volumes must be on the domains' host",
                            "give the storage connection a URI of the domains' own host (e.g. qemu+ssh://HOST/system "
                            "beside test+ssh://HOST/default), or leave it out to use the domains' connection")
    return store


class Storage:
    """Pools and volumes of one libvirt connection. `Storage(conn)` borrows an open Connection."""

    def __init__(self, conn: Connection, owned: bool = False) -> None:
        self.uri = conn.uri
        self._connection = conn
        self._conn = conn.handle
        self._owned = owned
        try:
            self._conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass  # local drivers and connections opened without an event loop have none

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            self._connection.close()

    # --- pools ---------------------------------------------------------------------------------

    def ensure_pool(self, name: str, default_dir: str = DEFAULT_POOL_DIR) -> PoolInfo:
        """The pool `name`, started; a `dir` pool at `default_dir` is defined, built, started and set to
        autostart when the connection has no pool of that name (an existing one is only started)."""
        action = f"prepare storage pool {name}"
        try:
            pool, created = self._conn.storagePoolLookupByName(name), False
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise _error(exc, action, self.uri) from None
            pool, created = self._define_dir_pool(name, default_dir), True
        try:
            if not pool.isActive():
                pool.create(0)
            return PoolInfo(name, _pool_path(pool.XMLDesc(0)), created)
        except libvirt.libvirtError as exc:
            raise _error(exc, action, self.uri) from None

    def _define_dir_pool(self, name: str, path: str) -> libvirt.virStoragePool:
        xml = _xml_text(_element("pool", {"type": "dir"}, [
            _element("name", text=name), _element("target", children=[_element("path", text=path)])]))
        try:
            pool = self._conn.storagePoolDefineXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"define storage pool {name} at {path}", self.uri) from None
        try:
            pool.build(0)  # mkdir -p, with the pool's permissions
            pool.create(0)
            pool.setAutostart(1)
        except libvirt.libvirtError as exc:
            error = _error(exc, f"start storage pool {name} at {path}", self.uri)
            _quietly(pool.undefine)  # a pool that cannot start is not left behind half made
            raise error from None
        return pool

    def _pool(self, name: str) -> libvirt.virStoragePool:
        try:
            return self._conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"look up storage pool {name}", self.uri) from None

    # --- volumes -------------------------------------------------------------------------------

    def volumes(self, pool: str) -> list[VolumeInfo]:
        """Every volume of the pool, by name (after a refresh: files copied in by hand count too)."""
        handle = self._pool(pool)
        try:
            handle.refresh(0)
            return sorted((_info(vol) for vol in handle.listAllVolumes(0)), key=lambda v: v.name)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"list the volumes of {pool}", self.uri) from None

    def volume(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume, or None when the pool has none of that name."""
        handle = self._pool(pool)
        try:
            return _info(handle.storageVolLookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise _error(exc, f"look up volume {name} in {pool}", self.uri) from None

    def upload(self, pool: str, name: str, src_path: str | os.PathLike, fmt: str,
               progress: Optional[Progress] = None) -> VolumeInfo:
        """A new volume holding the bytes of `src_path`, sent over the connection. libvirt reads the
        format from the bytes; one other than `fmt` fails. Any failure deletes the half-made volume."""
        handle = self._pool(pool)
        with fileio.open_input(src_path, "image", "upload source") as (source, st):
            size = st.st_size
            xml = _volume_xml(name, size, "raw", allocation=0)  # exactly `size` bytes, all overwritten
            try:
                vol = handle.createXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise _error(exc, f"create volume {name} in {pool}", self.uri) from None
            try:
                self._send(vol, source, size, progress, f"upload {name} to {pool}")
                handle.refresh(0)  # the format libvirt probes from the uploaded bytes
                info = _info(handle.storageVolLookupByName(name))
                if info.format != fmt:
                    raise BadInputError(f"upload {name} to {pool}: libvirt reads it as {info.format}, not {fmt}",
                                        "check that the file is what its name says")
                return info
            except BaseException as exc:
                _quietly(lambda: vol.delete(0))
                if isinstance(exc, libvirt.libvirtError):
                    raise _error(exc, f"upload {name} to {pool}", self.uri) from None
                raise

    def _send(self, vol: libvirt.virStorageVol, source, size: int, progress: Optional[Progress], action: str) -> None:
        stream = self._conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            done = 0
            while done < size:
                block = source.read(min(CHUNK, size - done))
                if not block:
                    raise BadInputError(f"{action}: the file shrank while it was read", "upload it again")
                while block:
                    sent = stream.send(block)
                    if sent <= 0:
                        raise SnpvirtError(f"{action}: libvirt took no data", "try again")
                    block = block[sent:]
                    done += sent
                if progress is not None:
                    progress(done, size)
            stream.finish()
        except BaseException:
            _quietly(stream.abort)
            raise

    def create_volume(self, pool: str, name: str, size_bytes: int, fmt: str = "qcow2",
                      backing: str | None = None) -> VolumeInfo:
        """A new empty volume of `size_bytes`, or with `backing` (a volume of the same pool) a qcow2
        overlay whose backing file is that volume's path: the guest writes only to the overlay."""
        handle = self._pool(pool)
        backing_store = None
        if backing is not None:
            if fmt != "qcow2":
                raise BadInputError(f"volume {name}: an overlay is qcow2, not {fmt}", "leave the format at qcow2")
            base = self.volume(pool, backing)
            if base is None:
                raise NotFoundError(f"volume {name}: its backing volume {backing} is not in pool {pool}",
                                    "pull the image first: snpvirt image pull ...")
            backing_store = _element("backingStore", children=[_element("path", text=base.path),
                                                               _element("format", {"type": base.format})])
        try:
            return _info(handle.createXML(_volume_xml(name, size_bytes, fmt, backing_store=backing_store), 0))
        except libvirt.libvirtError as exc:
            raise _error(exc, f"create volume {name} in {pool}", self.uri) from None

    def download(self, pool: str, name: str, dest: str | os.PathLike, max_bytes: int,
                 progress: Optional[Progress] = None) -> int:
        """The volume's bytes into `dest` (replaced atomically; nothing is left on failure), refusing a
        volume of more than `max_bytes`. Returns the bytes written."""
        target, _ = fileio.output_target(dest, what="download target")
        vol = self._vol(pool, name)
        action = f"download {name} from {pool}"
        try:
            size = vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]  # the file's bytes: what is sent
        except libvirt.libvirtError as exc:
            raise _error(exc, action, self.uri) from None
        if size > max_bytes:
            raise BadInputError(f"{action}: {size} bytes is more than the {max_bytes} expected",
                                "check that the volume is the file you mean")
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as sink:
                done = self._receive(vol, sink, size, max_bytes, progress, action)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temporary, target)
        except BaseException:
            _quietly(lambda: os.unlink(temporary))
            raise
        return done

    def _receive(self, vol: libvirt.virStorageVol, sink, size: int, max_bytes: int, progress: Optional[Progress],
                 action: str) -> int:
        stream = self._conn.newStream(0)
        try:
            vol.download(stream, 0, 0, 0)
            done = 0
            while block := stream.recv(CHUNK):
                if not isinstance(block, bytes):
                    raise SnpvirtError(f"{action}: the stream gave no data", "try again")
                done += len(block)
                if done > max_bytes:
                    raise BadInputError(f"{action}: more than the {max_bytes} bytes expected",
                                        "check that the volume is the file you mean")
                sink.write(block)
                if progress is not None:
                    progress(done, size)
            stream.finish()
            return done
        except libvirt.libvirtError as exc:
            _quietly(stream.abort)
            raise _error(exc, action, self.uri) from None
        except BaseException:
            _quietly(stream.abort)
            raise

    def delete(self, pool: str, name: str) -> None:
        vol = self._vol(pool, name)
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"delete volume {name} from {pool}", self.uri) from None

    def _vol(self, pool: str, name: str) -> libvirt.virStorageVol:
        handle = self._pool(pool)
        try:
            return handle.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"look up volume {name} in {pool}", self.uri) from None


# --- helpers -------------------------------------------------------------------------------------


def _quietly(call) -> None:
    """A clean-up step after a failure: its own error must not hide the first one."""
    try:
        call()
    except (libvirt.libvirtError, OSError):
        pass


def _element(tag: str, attrs: dict[str, str] | None = None, children: list | None = None, text: str | None = None):
    from lxml import etree

    element = etree.Element(tag, attrs or {})
    element.text = text
    element.extend(children or [])
    return element


def _volume_xml(name: str, capacity: int, fmt: str, allocation: int | None = None, backing_store=None) -> str:
    """libvirt's volume XML, built as elements: a name can never break it."""
    children = [_element("name", text=name), _element("capacity", {"unit": "bytes"}, text=str(capacity))]
    if allocation is not None:
        children.append(_element("allocation", {"unit": "bytes"}, text=str(allocation)))
    children.append(_element("target", children=[_element("format", {"type": fmt})]))
    if backing_store is not None:
        children.append(backing_store)
    return _xml_text(_element("volume", children=children))


def _xml_text(element) -> str:
    from lxml import etree

    return etree.tostring(element, encoding="unicode")


def _parse(xml: str):
    from lxml import etree

    return etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False, no_network=True))


def _pool_path(xml: str) -> str:
    return _parse(xml).findtext("target/path") or ""


def _info(vol: libvirt.virStorageVol) -> VolumeInfo:
    doc = _parse(vol.XMLDesc(0))
    fmt = doc.find("target/format")
    capacity = int(doc.findtext("capacity") or 0)
    return VolumeInfo(doc.findtext("name") or vol.name(), doc.findtext("target/path") or vol.path(),
                      capacity, int(doc.findtext("allocation") or 0), fmt.get("type") if fmt is not None else "raw",
                      int(doc.findtext("physical") or capacity))

