"""The in-process tar extraction of restores (``core/base/untar.py``), on archives written
by Python's ``tarfile`` and GNU tar: what it writes, and what it refuses."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from pg_backup_assets.core.base import untar
from pg_backup_assets.core.errors import PgBackupError

MTIME = 1_700_000_000


def archive(members: list[tuple[str, bytes | str | None]], fmt: int = tarfile.USTAR_FORMAT):
    """A tar stream: (name, bytes) a file, (name, None) a folder, (name, "->target") a link."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o750
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o640
                tar.addfile(info, io.BytesIO(content))
    return io.BytesIO(out.getvalue())


def test_files_folders_and_links_come_out_with_their_modes_and_times(tmp_path):
    big = os.urandom(3 * 2**20 + 5)  # more than one chunk, not a multiple of 512
    src = archive(
        [
            ("base/", None),
            ("base/1/", None),
            ("base/1/16384", big),
            ("base/1/empty", b""),
            ("global/pg_filenode.map", b"map"),  # its folder has no entry of its own
            ("pg_tblspc/16400", "->/somewhere/else"),
        ]
    )
    written = untar.extract(src, tmp_path, "part-0001")
    assert written == len(big) + 3
    assert (tmp_path / "base/1/16384").read_bytes() == big
    assert (tmp_path / "base/1/empty").read_bytes() == b""
    assert (tmp_path / "global/pg_filenode.map").read_bytes() == b"map"
    st = (tmp_path / "base/1/16384").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime == MTIME
    folder = (tmp_path / "base/1").stat()
    assert stat.S_IMODE(folder.st_mode) == 0o750 and folder.st_mtime == MTIME
    assert os.readlink(tmp_path / "pg_tblspc/16400") == "/somewhere/else"


def test_only_the_members_asked_for(tmp_path):
    src = archive([("a", b"1" * 700), ("b", b"2" * 5000), ("c", b"3")])
    assert untar.extract(src, tmp_path, "part", members=["./b"]) == 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_file_in_the_way_is_replaced_not_written_through(tmp_path):
    """A hard link to the old file (pg_upgrade --link leaves such) keeps its content; a
    symbolic link in the way is replaced, its target untouched."""
    (tmp_path / "elsewhere").write_bytes(b"keep me")
    (tmp_path / "data").mkdir()
    os.link(tmp_path / "elsewhere", tmp_path / "data/linked")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data/symlinked")
    untar.extract(archive([("linked", b"new"), ("symlinked", b"new")]), tmp_path / "data", "p")
    assert (tmp_path / "elsewhere").read_bytes() == b"keep me"
    assert (tmp_path / "data/linked").read_bytes() == b"new"
    assert not (tmp_path / "data/symlinked").is_symlink()


@pytest.mark.parametrize("name", ["../escape", "base/../../escape", "/etc/escape"])
def test_a_member_outside_the_folder_is_refused(tmp_path, name):
    (tmp_path / "to").mkdir()
    with pytest.raises(PgBackupError, match="part-7 has a member outside the folder"):
        untar.extract(archive([(name, b"x")]), tmp_path / "to", "part-7")
    assert not (tmp_path / "escape").exists()


def test_no_member_is_written_through_a_link_of_the_same_archive(tmp_path):
    """Links are made last (as GNU tar does): a later member named through one lands in a
    folder of its own inside the target, not where the link points."""
    outside = tmp_path / "outside"
    outside.mkdir()
    src = archive([("pg_tblspc/1", f"->{outside}"), ("pg_tblspc/1/file", b"x")])
    with pytest.raises(PgBackupError, match="extracting part into .* failed: File exists"):
        untar.extract(src, tmp_path / "to", "part")  # the link's place is a folder by then
    assert list(outside.iterdir()) == []


def test_long_names_in_gnu_and_pax_headers(tmp_path):
    name = "base/" + "d" * 120 + "/file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        to = tmp_path / str(fmt)
        untar.extract(archive([(name, b"long")], fmt), to, "part")
        assert (to / name).read_bytes() == b"long"


def test_a_stream_gnu_tar_wrote(tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    src = tmp_path / "src"
    (src / "base/1").mkdir(parents=True)
    (src / "base/1/123").write_bytes(os.urandom(70_000))
    os.symlink("base", src / "link")
    stream = subprocess.run(["tar", "-c", "-C", str(src), "."], capture_output=True, check=True)
    untar.extract(io.BytesIO(stream.stdout), tmp_path / "to", "part")
    assert (tmp_path / "to/base/1/123").read_bytes() == (src / "base/1/123").read_bytes()
    assert os.readlink(tmp_path / "to/link") == "base"


def test_damage_is_named(tmp_path):
    good = archive([("a", b"x" * 2000)]).getvalue()
    header = bytearray(good)
    header[10] ^= 0xFF  # in the name: the header's checksum no longer matches
    with pytest.raises(PgBackupError, match="part-3 has a tar header with a bad checksum"):
        untar.extract(io.BytesIO(bytes(header)), tmp_path, "part-3")
    with pytest.raises(PgBackupError, match="part-3 ends in the middle of a: it is cut short"):
        untar.extract(io.BytesIO(good[:1500]), tmp_path / "cut", "part-3")


def test_a_member_of_another_kind_is_refused(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("dev/null")
        info.type = tarfile.CHRTYPE
        tar.addfile(info)
    with pytest.raises(PgBackupError, match="dev/null is of tar type '3'"):
        untar.extract(io.BytesIO(out.getvalue()), tmp_path, "part")


def test_an_archive_without_its_end_is_refused(tmp_path: Path):
    data = archive([("a", b"x")]).getvalue()
    with pytest.raises(PgBackupError, match="part ends before the end of its tar archive"):
        untar.extract(io.BytesIO(data[:1024]), tmp_path, "part")
