import pytest

from pg_backup_assets.core.wal.names import (
    Segment,
    find_gaps,
    format_lsn,
    parse_history,
    parse_lsn,
    parse_segment,
    segment_of,
    segments_per_log,
    wal_file_kind,
)

MiB = 1 << 20
S16 = 16 * MiB


def names(tli, segnos, size=S16):
    return [Segment(tli, n).name(size) for n in segnos]


@pytest.mark.parametrize(
    "size, per_log, segno, name",
    [
        (S16, 256, 0x1FF, "0000000100000001000000FF"),
        (S16, 256, 0x100, "000000010000000100000000"),
        (MiB, 4096, 4097, "000000010000000100000001"),
        (64 * MiB, 64, 64 + 63, "00000001000000010000003F"),
        (1 << 30, 4, 9, "000000010000000200000001"),
    ],
)
def test_segment_names_depend_on_segment_size(size, per_log, segno, name):
    assert segments_per_log(size) == per_log
    assert Segment(1, segno).name(size) == name
    assert parse_segment(name, size) == Segment(1, segno)


def test_name_roundtrip_across_timelines_and_log_boundaries():
    for tli in (1, 2, 0xA, 0xFFFFFFFF):
        for segno in (0, 1, 255, 256, 257, 0xFFFFFF):
            seg = Segment(tli, segno)
            assert parse_segment(seg.name(S16), S16) == seg


@pytest.mark.parametrize(
    "bad",
    [
        "00000001000000010000100",
        "0000000100000001000001000",
        "00000000000000010000000A",
        "000000010000000100000100",
        "xyz",
    ],
)
def test_invalid_segment_names(bad):
    with pytest.raises(ValueError):
        parse_segment(bad, S16)  # wrong length, timeline 0, seg >= 256, junk


def test_invalid_segment_size():
    for size in (0, 1000, 3 * MiB, 2 << 30):
        with pytest.raises(ValueError, match="segment size"):
            segments_per_log(size)


def test_lsn_math():
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert segment_of(parse_lsn("1/2000028"), 3, S16).name(S16) == "000000030000000100000002"
    assert (
        segment_of(parse_lsn("0/3FFFFFF"), 1, 64 * MiB).name(64 * MiB) == "000000010000000000000000"
    )
    with pytest.raises(ValueError):
        parse_lsn("nope")


def test_file_kinds():
    assert wal_file_kind("000000010000000000000003") == "segment"
    assert wal_file_kind("00000002.history") == "history"
    assert wal_file_kind("000000010000000000000003.partial") == "partial"
    assert wal_file_kind("000000010000000000000003.00000028.backup") == "backup"
    with pytest.raises(ValueError, match="not a WAL file name"):
        wal_file_kind("postgresql.conf")


@pytest.mark.parametrize(
    "name",
    [
        "00000001000000000000000a",  # lower case: PostgreSQL writes upper case only
        "00000001000000000000000",
        "0000000100000000000000033",
        "000000010000000000000003\n",
        "0000000G.history",
        "00000002.history.ready",
        "000000010000000000000003.partial.done",
        "000000010000000000000003.0000028.backup",
        "000000010000000000000003-00000028.backup",
        "000000010000000000000003.00000028.backupx",
        "",
    ],
)
def test_not_wal_file_names(name):
    with pytest.raises(ValueError, match="not a WAL file name"):
        wal_file_kind(name)


def test_history_parsing():
    text = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000100\tbefore 2026-11-26\n"
    switches = parse_history(3, text)
    assert [(s.parent, s.child, format_lsn(s.lsn)) for s in switches] == [
        (1, 2, "0/3000000"),
        (2, 3, "0/5000100"),
    ]


def test_contiguous_archive():
    report = find_gaps(names(1, range(10, 20)), {}, S16)
    assert report.contiguous and report.count == 10 and report.missing == []
    assert report.first == "00000001000000000000000A" and report.last == "000000010000000000000013"


def test_missing_segments_are_named_as_ranges():
    have = [n for n in range(0, 600) if n not in (5, 300, 301, 302)]
    report = find_gaps(names(1, have), {}, S16)
    assert not report.contiguous
    assert report.missing == [
        ("000000010000000000000005", "000000010000000000000005"),
        ("00000001000000010000002C", "00000001000000010000002E"),
    ]
    assert report.missing_count == 4
    assert "000000010000000000000005" in report.describe()


def test_start_from_backup_start_lsn():
    # The oldest backup starts at segment 5; 5 and 6 were never archived.
    report = find_gaps(names(1, range(7, 12)), {}, S16, start_lsn=5 * S16 + 40)
    assert report.missing == [("000000010000000000000005", "000000010000000000000006")]
    # Segments before the backup's start do not matter.
    report = find_gaps(names(1, [1, 2, *range(5, 12)]), {}, S16, start_lsn=5 * S16)
    assert report.contiguous


def test_gaps_follow_the_timeline_switch():
    # Timeline 2 branched from 1 inside segment 0x20: 0x20 onwards is on timeline 2.
    history = {2: parse_history(2, "1\t0/200000A0\tno recovery target specified\n")}
    archive = names(1, range(0x10, 0x21)) + names(2, range(0x20, 0x30))
    report = find_gaps(archive, history, S16)
    assert report.timeline == 2 and report.contiguous
    assert report.first == "000000010000000000000010" and report.last == "00000002000000000000002F"

    # Timeline 1's copy of the switch segment does not stand in for timeline 2's.
    archive = names(1, range(0x10, 0x21)) + names(2, range(0x21, 0x30))
    report = find_gaps(archive, history, S16)
    assert report.missing == [("000000020000000000000020", "000000020000000000000020")]

    # Missing segments before the switch are named on timeline 1.
    archive = [n for n in names(1, range(0x10, 0x21)) if not n.endswith("15")]
    report = find_gaps(archive + names(2, range(0x20, 0x30)), history, S16)
    assert report.missing == [("000000010000000000000015", "000000010000000000000015")]


def test_abandoned_timeline_is_ignored_and_missing_history_is_reported():
    # Timeline 2 was a dead end; timeline 3 branched from 1 at segment 0x18.
    history = {2: parse_history(2, "1\t0/14000000\tx\n"), 3: parse_history(3, "1\t0/18000000\ty\n")}
    archive = (
        names(1, range(0x10, 0x18)) + names(2, range(0x14, 0x40)) + names(3, range(0x18, 0x1C))
    )
    report = find_gaps(archive, history, S16)
    assert report.timeline == 3 and report.contiguous and report.count == 12

    report = find_gaps(names(1, range(0, 3)) + names(2, range(3, 5)), {}, S16)
    assert report.missing_history == "00000002.history"
    assert not report.contiguous


def test_empty_archive():
    report = find_gaps([], {}, S16)
    assert report.contiguous and report.first is None and report.describe() == "no WAL archived yet"


def test_wal_to_replay_follows_the_newest_timeline():
    from pg_backup_assets.core.wal.archive import ArchiveListing, WalObject
    from pg_backup_assets.core.wal.names import Segment, Switch
    from pg_backup_assets.core.wal.prefetch import wal_to_replay

    size = 16 * 2**20

    def seg(tl: int, segno: int) -> WalObject:
        name = Segment(tl, segno).name(size)
        return WalObject(name, "segment", f"k/{name}", "0" * 64, 1, 0.0)

    # Timeline 2 branched off inside segment 3; timeline 1 went on to segment 5 anyway.
    segments = [seg(1, n) for n in range(1, 6)] + [seg(2, n) for n in (3, 4, 6)]
    history = WalObject("00000002.history", "history", "k/h", "0" * 64, 1, 0.0)
    listing = ArchiveListing(segments, {2: [Switch(1, 2, 3 * size + 100)]}, [], size, [history])
    names = [o.name for o in wal_to_replay(listing, 2 * size + 40, None)]
    # The history first; segment 2 from timeline 1, then timeline 2 from its switch on;
    # timeline 2's segment 5 is not archived (the restore's gap check refuses that case).
    expected = [Segment(t, n).name(size) for t, n in [(1, 2), (2, 3), (2, 4), (2, 6)]]
    assert names == ["00000002.history", *expected]
    to_lsn = [o.name for o in wal_to_replay(listing, 2 * size, 4 * size + 5)]
    assert to_lsn[-1] == Segment(2, 4).name(size) and len(to_lsn) == 4
    empty = ArchiveListing([], {}, [], None, [])
    assert wal_to_replay(empty, 0, None) == []
