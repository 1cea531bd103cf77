"""Walk a tar shard's headers in S3 and report where each regular member's data lies, never reading the data.

The standard library's ``tarfile`` parses the headers (ustar, GNU long names, pax records, checksums, base-256
sizes); it reads them through :class:`~producers.dataset.window.S3Window`, so skipping a member's data is a seek,
and the archive is never downloaded or spooled whole. Member lists are not kept (``tarfile`` would hold every
``TarInfo`` of a 100,000-member shard): memory stays flat however large the shard is.

``tarfile`` ends iteration quietly at a damaged header; the walk looks at the block it stopped at and tells a
clean end (end-of-archive zeros, or the object's end) from a corrupt or truncated shard, so the caller can report
it (the members after a damaged header cannot be found at all).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from producers.dataset.window import S3Window

BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class TarEntry:
    """A regular member: ``size`` bytes at ``offset`` of the shard."""

    name: str
    offset: int
    size: int


@dataclass
class WalkEnd:
    """How the walk ended: ``problem`` is None for a clean end, else why members may be missing after ``offset``."""

    offset: int = 0
    problem: str | None = None
    skipped: int = 0  # members that are not regular files (directories, links): never images


def walk_tar(reader: S3Window, end: WalkEnd) -> Iterator[TarEntry]:
    """Yield the shard's regular members in archive order; fill ``end`` when the walk stops."""
    try:
        tar = tarfile.open(fileobj=reader, mode="r:")  # noqa: SIM115 - closed below; reading headers only
    except tarfile.ReadError as exc:
        end.problem = "not a tar archive" if reader.size else "empty object"
        if reader.size and "empty file" not in str(exc):
            end.problem = f"not a tar archive ({exc})"
        return
    try:
        while True:
            try:
                info = tar.next()
            except tarfile.ReadError as exc:  # the previous member's data runs past the end of the object
                end.offset, end.problem = tar.offset, f"truncated shard ({exc})"
                return
            _forget_members(tar)
            if info is None:
                end.offset = tar.offset
                end.problem = _why_it_stopped(reader, tar.offset)
                return
            if not info.isreg():
                end.skipped += 1
                continue
            yield TarEntry(info.name, info.offset_data, info.size)
    finally:
        tar.close()


def _forget_members(tar: tarfile.TarFile) -> None:
    """``TarFile.next`` appends every member to ``tar.members`` (for ``getmembers``); iteration needs none of it."""
    members: list[tarfile.TarInfo] = tar.__dict__["members"]
    members.clear()


def _why_it_stopped(reader: S3Window, offset: int) -> str | None:
    """``tarfile`` returns no member both at the end-of-archive marker and at a corrupt header: tell them apart."""
    if offset >= reader.size:
        return None  # the object ends on a member boundary (no end-of-archive blocks): complete
    reader.seek(offset)
    block = reader.read(BLOCK)
    if len(block) < BLOCK:
        return f"truncated shard: a partial header at byte {offset:,}"
    if block.count(0) == BLOCK:
        return None  # end-of-archive marker
    return f"corrupt tar header at byte {offset:,}: members after it cannot be located"
