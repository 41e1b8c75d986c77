"""WAL file naming, LSN arithmetic, timeline histories and gap math. Pure functions.

A segment name is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the segment number split
into a "log" part and a "seg" part, where one log holds ``2**32 / segment size`` segments
(256 for the default 16 MiB). The segment size comes from the server
(``wal_segment_size``), never from a constant.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from typing import NamedTuple

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_HEX = frozenset("0123456789ABCDEF")


def _is_hex(text: str, length: int) -> bool:
    # Plain string checks, not regular expressions: wal-push runs once per segment, and
    # compiling patterns at import is a measurable share of its start-up.
    return len(text) == length and _HEX.issuperset(text)


def check_segment_size(size: int) -> int:
    # PostgreSQL allows powers of two from 1 MiB to 1 GiB.
    if size < 1 << 20 or size > 1 << 30 or size & (size - 1):
        raise ValueError(f"invalid WAL segment size {size}: a power of two from 1 MiB to 1 GiB")
    return size


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // check_segment_size(segment_size)


class Segment(NamedTuple):
    timeline: int
    segno: int  # absolute segment number: lsn // segment size

    def name(self, segment_size: int) -> str:
        per = segments_per_log(segment_size)
        return f"{self.timeline:08X}{self.segno // per:08X}{self.segno % per:08X}"


def parse_segment(name: str, segment_size: int) -> Segment:
    if not is_segment_name(name):
        raise ValueError(f"{name!r} is not a WAL segment name")
    tli, log, seg = (int(name[i : i + 8], 16) for i in (0, 8, 16))
    per = segments_per_log(segment_size)
    if seg >= per:
        raise ValueError(f"{name!r} is not a valid segment name for {segment_size}-byte segments")
    if tli == 0:
        raise ValueError(f"{name!r} has timeline 0, which PostgreSQL never uses")
    return Segment(tli, log * per + seg)


def is_segment_name(name: str) -> bool:
    return _is_hex(name, 24)


def wal_file_kind(name: str) -> str:
    """'segment', 'history', 'partial' or 'backup'; ValueError for anything else."""
    if _is_hex(name, 24):
        return "segment"
    if name.endswith(".history") and _is_hex(name[:-8], 8):
        return "history"
    if name.endswith(".partial") and _is_hex(name[:-8], 24):
        return "partial"
    if (
        name.endswith(".backup")
        and len(name) == 40
        and name[24] == "."
        and _is_hex(name[:24], 24)
        and _is_hex(name[25:33], 8)
    ):
        return "backup"
    raise ValueError(f"{name!r} is not a WAL file name (segment, .history, .partial or .backup)")


# The long page header that starts every WAL segment (access/xlog_internal.h):
# magic u16, info u16, tli u32, pageaddr u64, rem_len u32 (+4 padding), sysid u64,
# seg_size u32, xlog_blcksz u32. Native byte order: WAL is not portable across architectures.
_LONG_HEADER = struct.Struct("=HHIQI4xQII")
_XLP_LONG_HEADER = 0x0002


class SegmentHeader(NamedTuple):
    pageaddr: int
    system_identifier: int
    segment_size: int


def read_segment_header(name: str, head: bytes, file_size: int) -> SegmentHeader:
    """Check that a segment (or .partial) file is WAL, whole, and the one its name says.

    ``head``: the file's first bytes (at least 40). ValueError says what is wrong.
    """
    if file_size == 0:
        raise ValueError(f"{name} is empty (0 bytes): not a WAL segment")
    if len(head) < _LONG_HEADER.size:
        raise ValueError(f"{name} is {file_size} bytes: too short to be a WAL segment")
    _magic, info, _tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(head)
    if not info & _XLP_LONG_HEADER or blcksz < 1024 or blcksz & (blcksz - 1):
        raise ValueError(f"{name} does not start with a WAL segment header: not a WAL file")
    try:
        check_segment_size(seg_size)
    except ValueError:
        raise ValueError(
            f"{name} does not start with a WAL segment header: not a WAL file"
        ) from None
    if file_size != seg_size:
        raise ValueError(
            f"{name} is {file_size} bytes, but its header says segments are {seg_size} bytes: "
            "the file is truncated or damaged"
        )
    expected = parse_segment(name[:24], seg_size).segno * seg_size
    if pageaddr != expected:
        raise ValueError(
            f"{name} holds the WAL of {format_lsn(pageaddr)}, not of {format_lsn(expected)} "
            "as its name says"
        )
    return SegmentHeader(pageaddr, sysid, seg_size)


def _power_of_two(n: int, low: int, high: int) -> bool:
    return low <= n <= high and not n & (n - 1)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer LSN."""
    m = re.match(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an LSN (expected like 0/16B3748)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of(lsn: int, timeline: int, segment_size: int) -> Segment:
    return Segment(timeline, lsn // check_segment_size(segment_size))


class Switch(NamedTuple):
    """Timeline ``parent`` ended at ``lsn``, where ``child`` began."""

    parent: int
    child: int
    lsn: int


def parse_history(child: int, text: str) -> list[Switch]:
    """Parse ``<child>.history``: one line per ancestor, ``parentTLI<TAB>switchpoint<TAB>reason``.

    Returns the whole ancestry of ``child`` as switches, oldest first.
    """
    entries: list[tuple[int, int]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        if len(fields) < 2:
            raise ValueError(f"{child:08X}.history line {n}: expected 'parentTLI switchpoint'")
        try:
            entries.append((int(fields[0]), parse_lsn(fields[1])))
        except ValueError as exc:
            raise ValueError(f"{child:08X}.history line {n}: {exc}") from None
    switches = []
    for i, (parent, lsn) in enumerate(entries):
        next_tli = entries[i + 1][0] if i + 1 < len(entries) else child
        switches.append(Switch(parent, next_tli, lsn))
    return switches


def timeline_of(segno: int, path: list[Switch], target: int, segment_size: int) -> int:
    """Which timeline's file holds segment ``segno`` when recovering along ``path`` to ``target``.

    The segment that contains a switch point belongs to the new timeline (the old
    timeline's copy, if any, is archived as ``.partial``).
    """
    for switch in path:  # oldest first
        if segno < switch.lsn // segment_size:
            return switch.parent
    return target


class GapReport(NamedTuple):
    timeline: int  # the newest timeline, whose ancestry is followed
    first: str | None  # first expected segment (of the checked range)
    last: str | None  # newest archived segment
    count: int  # archived segments on the path within the range
    missing: list[tuple[str, str]]  # inclusive ranges of missing segment names
    missing_count: int = 0
    missing_history: str | None = None  # the newest timeline's .history, when absent

    @property
    def contiguous(self) -> bool:
        return not self.missing and self.missing_history is None

    def describe(self) -> str:
        if self.first is None:
            return "no WAL archived yet"
        parts = []
        if self.missing_history:
            parts.append(f"{self.missing_history} is missing (the timeline cannot be followed)")
        if self.missing:
            ranges = ", ".join(a if a == b else f"{a}..{b}" for a, b in self.missing[:10])
            more = f" and {len(self.missing) - 10} more ranges" if len(self.missing) > 10 else ""
            parts.append(f"{self.missing_count} segments missing: {ranges}{more}")
        if not parts:
            span = f"{self.first}..{self.last}"
            return f"{self.count} segments {span} on timeline {self.timeline}, no gap"
        return "; ".join(parts)


def find_gaps(
    segment_names: Iterable[str],
    histories: Mapping[int, list[Switch]],
    segment_size: int,
    start_lsn: int | None = None,
    timeline: int | None = None,
) -> GapReport:
    """Find every missing segment between the start and the newest archived segment.

    ``histories`` maps a timeline to its ancestry (``parse_history``). ``timeline`` (the
    one the live server is on), else the newest (highest id among segments and
    histories), is followed back through its ancestry; segments of other timelines are
    ignored. The range starts at ``start_lsn`` (the oldest retained base backup's start)
    or, without one, at the oldest archived segment on the path.
    """
    segs = [parse_segment(n, segment_size) for n in segment_names]
    timelines = {s.timeline for s in segs} | set(histories)
    if not timelines:
        return GapReport(timeline or 1, None, None, 0, [])
    target = timeline or max(timelines)
    path = list(histories.get(target, []))
    on_path = sorted(
        s for s in segs if s.timeline == timeline_of(s.segno, path, target, segment_size)
    )
    if not on_path:
        return GapReport(target, None, None, 0, [])
    have = {s.segno for s in on_path}
    end = on_path[-1].segno
    begin = start_lsn // segment_size if start_lsn is not None else on_path[0].segno
    missing: list[tuple[str, str]] = []
    run_start: int | None = None
    for segno in range(begin, end + 1):
        if segno in have:
            if run_start is not None:
                missing.append(_range(run_start, segno - 1, path, target, segment_size))
                run_start = None
        elif run_start is None:
            run_start = segno
        elif timeline_of(segno, path, target, segment_size) != timeline_of(
            run_start, path, target, segment_size
        ):
            missing.append(_range(run_start, segno - 1, path, target, segment_size))
            run_start = segno
    count = sum(1 for s in on_path if s.segno >= begin)
    first = Segment(timeline_of(begin, path, target, segment_size), begin).name(segment_size)
    missing_count = sum(1 for segno in range(begin, end + 1) if segno not in have)
    return GapReport(
        target,
        first,
        on_path[-1].name(segment_size),
        count,
        missing,
        missing_count,
        f"{target:08X}.history" if target > 1 and target not in histories else None,
    )


def _range(a: int, b: int, path: list[Switch], target: int, size: int) -> tuple[str, str]:
    return (
        Segment(timeline_of(a, path, target, size), a).name(size),
        Segment(timeline_of(b, path, target, size), b).name(size),
    )
