import io
import tarfile
from collections import Counter

import pytest
import webdataset as wds

from clipforge.data.shards import raw_samples
from clipforge.data.tarstream import TarError, tar_members

LONG = "deep/" * 30 + "name-longer-than-one-hundred-bytes.jpg"  # 188 chars: needs prefix, GNU L or pax


def archive(fmt: int) -> bytes:
    """Regular files of awkward sizes and names, plus a directory and a symlink, in one tar format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in [
            ("a.txt", b"x"),
            ("b.bin", b"\x00" * 512),
            ("c.jpg", bytes(range(256)) * 7),
            ("empty.txt", b""),
            (LONG, b"long"),
            ("ünï/cödé.txt", "é".encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        s = tarfile.TarInfo("link.txt")
        s.type, s.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(s)
    return buf.getvalue()


def reference(raw: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_members_as_tarfile_in_every_format(fmt):
    raw = archive(fmt)
    ours = list(tar_members(io.BytesIO(raw)))
    assert ours == reference(raw)
    assert [n for n, _ in ours][-2:] == [LONG, "ünï/cödé.txt"] and len(ours) == 6


def test_webdataset_tarwriter_shard(tmp_path):
    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            sink.write({"__key__": f"{i:04d}", "jpg": b"\xff\xd8" + bytes(i * 100), "txt": f"caption {i}"})
    raw = path.read_bytes()
    assert list(tar_members(io.BytesIO(raw))) == reference(raw)


def test_truncated_and_corrupted_archives_raise():
    raw = archive(tarfile.GNU_FORMAT)
    with pytest.raises(TarError, match="unexpected end"):
        list(tar_members(io.BytesIO(raw[:1000])))  # cut inside a member's data
    with pytest.raises(TarError, match="truncated header"):
        list(tar_members(io.BytesIO(raw[: 2048 + 100])))  # a.txt and b.bin whole, c.jpg's header cut
    bad = bytearray(raw)
    bad[5] ^= 0x55  # a name byte of the first header: its checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(bad))))


def test_a_broken_shard_is_counted_and_the_next_one_still_read(tmp_path):
    good = tmp_path / "good.tar"
    with wds.TarWriter(str(good)) as sink:
        for i in range(3):
            sink.write({"__key__": f"k{i}", "txt": f"caption {i}"})
    broken = tmp_path / "broken.tar"
    raw = bytearray(good.read_bytes())
    raw[2048 + 5] ^= 0xFF  # the second member's first header (TarWriter gives each member 2048 bytes)
    broken.write_bytes(bytes(raw[:4096]))
    stats: Counter = Counter()
    samples = list(raw_samples([str(broken), str(good)], stats))
    assert stats["broken_member"] == 1
    assert [s["__key__"] for s in samples][-3:] == ["k0", "k1", "k2"]  # the good shard, whole
    assert all(s["__url__"] == str(good) for s in samples[-3:])


def test_a_shard_that_cannot_be_opened_is_counted_and_said_plainly(tmp_path):
    """The warning carried Python's bare `[Errno 21] Is a directory: '...'`."""
    import warnings
    from collections import Counter

    from clipforge.data.shards import raw_samples

    (tmp_path / "dir.tar").mkdir()
    stats: Counter = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(raw_samples([str(tmp_path / "missing.tar"), str(tmp_path / "dir.tar")], stats)) == []
    said = [str(w.message) for w in caught]
    assert stats["shard_error"] == 2 and not any("Errno" in s for s in said), said
    assert said == [
        f"skipping shard that cannot be opened: no such file or directory: {tmp_path / 'missing.tar'}",
        f"skipping shard that cannot be opened: is a directory: {tmp_path / 'dir.tar'}",
    ]
