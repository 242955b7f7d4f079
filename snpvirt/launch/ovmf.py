"""OVMF image structure that SEV-SNP depends on: the GUIDed footer table and the `ASEV` metadata.

Layout: docs/measurement.md §3 (EDK2 ResetVectorVtf0.asm, OvmfSevMetadata.asm).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc").bytes_le


class OvmfError(ValueError):
    """The image lacks a structure SEV-SNP needs."""


@dataclass(frozen=True)
class MetadataSection:
    gpa: int
    size: int
    section_type: int


@dataclass(frozen=True)
class OvmfImage:
    size: int
    footer_entries: dict[bytes, bytes]  # GUID (bytes_le) -> entry data, in table order
    sev_sections: tuple[MetadataSection, ...]  # in the metadata's own order

    @property
    def has_kernel_hashes(self) -> bool:
        return any(s.section_type == 0x10 for s in self.sev_sections)


def footer_table(data: bytes) -> dict[bytes, bytes]:
    size = len(data)
    if size < 50 or data[size - 48:size - 32] != FOOTER_GUID:
        raise OvmfError("no OVMF GUIDed footer table")
    (length,) = struct.unpack_from("<H", data, size - 50)
    start, end = size - 32 - length, size - 50
    if length < 18 or start < 0:
        raise OvmfError(f"OVMF footer table length {length} is invalid")
    entries: list[tuple[bytes, bytes]] = []
    while end - start >= 18:
        (entry_len,) = struct.unpack_from("<H", data, end - 18)
        guid = data[end - 16:end]
        if entry_len < 18 or end - entry_len < start:
            raise OvmfError("OVMF footer table entry is malformed")
        entries.append((guid, data[end - entry_len:end - 18]))
        end -= entry_len
    return dict(reversed(entries))


def parse(data: bytes) -> OvmfImage:
    """Parse an OVMF image; raise OvmfError when it is not an SEV-capable build."""
    entries = footer_table(data)
    entry = entries.get(SEV_METADATA_GUID)
    if entry is None or len(entry) < 4:
        raise OvmfError("no SEV metadata entry in the OVMF footer table")
    (offset_from_end,) = struct.unpack_from("<I", entry)
    header = len(data) - offset_from_end
    if not 0 <= header <= len(data) - 16 or data[header:header + 4] != b"ASEV":
        raise OvmfError("the SEV metadata ('ASEV') header is missing")
    _, _, version, count = struct.unpack_from("<4sIII", data, header)
    if version != 1 or header + 16 + 12 * count > len(data):
        raise OvmfError(f"unsupported SEV metadata (version {version}, {count} sections)")
    sections = tuple(MetadataSection(*struct.unpack_from("<III", data, header + 16 + 12 * i)) for i in range(count))
    return OvmfImage(len(data), entries, sections)
