"""Dataset mode without services: walking tar shards and Parquet files through ranged reads (an in-memory S3),
pairing sidecars, resuming mid-shard, and naming the results files."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest

from producers.dataset.parquetrows import parquet_samples
from producers.dataset.samples import Sample, Shard, ShardDone, Sidecar
from producers.dataset.shards import Resume, dataset_pages, list_shards
from producers.dataset.tarwalk import WalkEnd, walk_tar
from producers.dataset.webdataset import split_name, webdataset_samples
from producers.dataset.window import S3Window
from schemas.backfill import BackfillOptions
from schemas.dataset import AbsentMember, ParquetCell, TarMember
from schemas.errors import ErrorCode, PermanentError
from schemas.models import DEFAULT_MODEL
from tests import images
from tests.producers.datasets import (
    MemoryS3,
    header_offset,
    image_table,
    img2dataset_sample,
    sidecar,
    tar_shard,
    url_table,
)
from worker.delivery.results.shardfile import parquet_bytes, results_object

B = "bucket"


def shard_of(s3: MemoryS3, key: str, body: bytes, side: tuple[str, bytes] | None = None) -> Shard:
    etag = s3.put(B, key, body)
    car = None
    if side is not None:
        car = Sidecar(side[0], len(side[1]), s3.put(B, side[0], side[1]))
    return Shard(B, key, len(body), etag, car)


def rows(units: list[Sample | ShardDone]) -> list[Sample]:
    return [u for u in units if isinstance(u, Sample)]


def done(units: list[Sample | ShardDone]) -> ShardDone:
    last = units[-1]
    assert isinstance(last, ShardDone)
    return last


def test_the_tar_walk_finds_every_members_data_by_reading_headers_only() -> None:
    big = b"\x01" * 3_000_000  # far more than a window: skipped by seeking, never fetched
    body = tar_shard([("a", {"jpg": b"A" * 700}), ("b", {"bin": big}), ("c" * 150, {"jpg": b"C" * 10})])
    s3 = MemoryS3()
    s3.put(B, "s.tar", body)
    reader = S3Window(s3, B, "s.tar", size=len(body), window=64 * 1024)
    end = WalkEnd()

    found = list(walk_tar(reader, end))

    assert ["a.jpg", "b.bin", f"{'c' * 150}.jpg"] == [m.name for m in found]  # a GNU long name too
    assert [b"A" * 700, big, b"C" * 10] == [body[m.offset : m.offset + m.size] for m in found]
    assert end.problem is None
    assert reader.stats.bytes < 300_000  # the 3 MB member was not read
    assert 3 >= reader.stats.requests


def test_pax_headers_and_folders_are_understood() -> None:
    body = tar_shard([("é" * 120, {"jpg": b"x"})], fmt=tarfile.PAX_FORMAT, folders=True)
    s3 = MemoryS3()
    s3.put(B, "s.tar", body)
    end = WalkEnd()
    found = list(walk_tar(S3Window(s3, B, "s.tar", size=len(body)), end))
    assert [f"{'é' * 120}.jpg"] == [m.name for m in found]
    assert (None, 1) == (end.problem, end.skipped)


def test_a_corrupt_header_ends_the_walk_with_a_problem_not_silently() -> None:
    good = [img2dataset_sample(f"{i:03d}", images.solid()) for i in range(4)]
    body = bytearray(tar_shard(good))
    at = header_offset(bytes(body), "002.jpg")
    body[at : at + 20] = b"\xde\xad" * 10  # name and mode garbage: the header checksum no longer holds
    s3 = MemoryS3()
    s3.put(B, "s.tar", bytes(body))
    end = WalkEnd()
    found = list(walk_tar(S3Window(s3, B, "s.tar", size=len(body)), end))
    assert ["000.jpg", "000.json", "000.txt", "001.jpg", "001.json", "001.txt"] == [m.name for m in found]
    assert f"corrupt tar header at byte {at:,}" in (end.problem or "")


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"", "empty object"), (b"this is not a tar file at all" * 40, "not a tar archive")],
    ids=["empty", "not-a-tar"],
)
def test_an_object_that_is_no_tar_is_reported(body: bytes, problem: str) -> None:
    s3 = MemoryS3()
    s3.put(B, "s.tar", body)
    end = WalkEnd()
    assert [] == list(walk_tar(S3Window(s3, B, "s.tar", size=len(body)), end))
    assert (end.problem or "").startswith(problem)


def test_a_truncated_shard_still_yields_the_cut_member_and_reports_the_cut() -> None:
    body = tar_shard([("a", {"jpg": b"A" * 2000}), ("b", {"jpg": b"B" * 5000})])
    cut = body[: header_offset(body, "b.jpg") + 512 + 1000]
    s3 = MemoryS3()
    s3.put(B, "s.tar", cut)
    end = WalkEnd()
    found = list(walk_tar(S3Window(s3, B, "s.tar", size=len(cut)), end))
    assert ["a.jpg", "b.jpg"] == [m.name for m in found]
    assert found[1].offset + found[1].size > len(cut)  # the worker's range read fails it as truncated_image
    assert "truncated" in (end.problem or "")


def test_webdataset_keys_are_the_path_up_to_the_first_dot_of_the_file_name() -> None:
    assert ("000123", "jpg") == split_name("000123.jpg")
    assert ("dir/x", "seg.png") == split_name("./dir/x.seg.PNG")


def test_a_shard_with_its_sidecar_yields_every_row_once_in_a_fixed_order() -> None:
    """Tar samples in archive order, then sidecar rows the tar lacks: a sample without image, a key the sidecar says
    was downloaded but is absent, and a key img2dataset failed to download (skipped, counted)."""
    s3 = MemoryS3()
    samples = [img2dataset_sample("000", images.solid()), img2dataset_sample("001", None)]
    samples += [img2dataset_sample("002", b"\xff\xd8 corrupt jpeg"), ("003", {"png": b"P", "jpg": b"J"})]
    statuses = [("000", "success"), ("001", "success"), ("002", "success"), ("003", "success")]
    statuses += [("004", "failed_to_download"), ("005", "success")]
    shard = shard_of(s3, "d/00000.tar", tar_shard(samples), ("d/00000.parquet", sidecar(statuses)))

    units = list(webdataset_samples(s3, shard))

    found = rows(units)
    assert ["000", "001", "002", "003", "004", "005"] == [s.key for s in found]
    assert list(range(6)) == [s.position for s in found] == [s.index for s in found]
    first = found[0].image
    assert first is not None and isinstance(first.member, TarMember)
    assert (first.member.name, first.etag, str(first)) == ("000.jpg", shard.etag, "s3://bucket/d/00000.tar#000.jpg")
    body = s3.objects[(B, "d/00000.tar")]
    assert images.solid() == body[first.member.offset : first.member.offset + first.member.length]
    assert found[3].image is not None and isinstance(found[3].image.member, TarMember)
    assert "003.jpg" == found[3].image.member.name  # jpg is preferred over png
    for absent in (found[1], found[5]):
        assert absent.image is not None and isinstance(absent.image.member, AbsentMember)
        assert ErrorCode.NOT_FOUND == absent.image.member.code
    assert (None, "not_downloaded") == (found[4].image, found[4].skip)
    summary = done(units).summary
    assert (6, 5, 2, {"not_downloaded": 1}, []) == (
        summary.rows,
        summary.jobs,
        summary.missing,
        summary.skipped,
        summary.problems,
    )


def test_samples_the_sidecar_lists_after_a_corrupt_header_become_failed_rows_naming_the_damage() -> None:
    s3 = MemoryS3()
    keys = [f"{i:03d}" for i in range(5)]
    body = bytearray(tar_shard([img2dataset_sample(k, images.solid()) for k in keys]))
    at = header_offset(bytes(body), "003.jpg")
    body[at : at + 8] = b"\x00garbage"
    shard = shard_of(s3, "d/1.tar", bytes(body), ("d/1.parquet", sidecar([(k, "success") for k in keys])))

    units = list(webdataset_samples(s3, shard))

    found = rows(units)
    assert keys == [s.key for s in found]
    lost = [s.image.member for s in found[3:] if s.image is not None]
    assert all(isinstance(m, AbsentMember) and "corrupt tar header" in m.message for m in lost) and len(lost) == 2
    assert [f"corrupt tar header at byte {at:,}: members after it cannot be located"] == done(units).summary.problems


def test_an_unreadable_sidecar_is_reported_and_the_tar_is_still_moderated() -> None:
    s3 = MemoryS3()
    shard = shard_of(s3, "d/2.tar", tar_shard([img2dataset_sample("a", images.solid())]), ("d/2.parquet", b"PAR1 no"))
    units = list(webdataset_samples(s3, shard))
    assert ["a"] == [s.key for s in rows(units)]
    assert done(units).summary.problems[0].startswith("sidecar d/2.parquet unreadable")


def test_max_bytes_skips_large_images_and_counts_them() -> None:
    s3 = MemoryS3()
    shard = shard_of(s3, "d/3.tar", tar_shard([("a", {"jpg": b"x" * 10}), ("b", {"jpg": b"y" * 5000})]))
    units = list(webdataset_samples(s3, shard, max_bytes=1000))
    assert [None, "size"] == [s.skip for s in rows(units)]
    assert {"size": 1} == done(units).summary.skipped


def test_parquet_image_rows_reference_their_cell_and_url_rows_their_url() -> None:
    s3 = MemoryS3()
    table = shard_of(s3, "p/0.parquet", image_table([("a", b"1"), ("b", b"2"), ("c", b"3")], row_group_size=2))
    cells = rows(list(parquet_samples(s3, table, key_column="key", image_column="jpg", url_column=None)))
    assert [("a", 0, 0), ("b", 0, 1), ("c", 1, 0)] == [
        (s.key, s.image.member.row_group, s.image.member.row)
        for s in cells
        if s.image is not None and isinstance(s.image.member, ParquetCell)
    ]
    assert "s3://bucket/p/0.parquet#jpg[1:0]" == str(cells[2].image)

    urls = [("a", "https://img.example/a.jpg"), ("b", None), ("c", "gopher://x/y"), ("d", "not a url")]
    shard = shard_of(s3, "p/1.parquet", url_table(urls))
    found = rows(list(parquet_samples(s3, shard, key_column="key", image_column=None, url_column="url")))
    assert "https://img.example/a.jpg" == str(found[0].image)
    codes = [s.image.member.code for s in found[1:] if s.image is not None and isinstance(s.image.member, AbsentMember)]
    assert [ErrorCode.NOT_FOUND, ErrorCode.FORBIDDEN_SOURCE, ErrorCode.INVALID_SOURCE] == codes


def test_a_parquet_file_without_the_named_column_is_a_shard_problem_with_no_rows() -> None:
    s3 = MemoryS3()
    shard = shard_of(s3, "p/2.parquet", url_table([("a", "https://x.example/a.jpg")]))
    units = list(parquet_samples(s3, shard, key_column="key", image_column="jpg", url_column=None))
    assert 1 == len(units)
    assert done(units).summary.problems[0].startswith("no column 'jpg'")


def options(kind: str, prefix: str = "d/", **kw: Any) -> BackfillOptions:
    return BackfillOptions(
        source=f"s3://{B}/{prefix}",
        mode="list",
        bucket=B,
        prefix=prefix,
        model=DEFAULT_MODEL,
        queue="q",
        format=kind,
        **kw,
    )  # type: ignore[arg-type]


def test_tar_shards_are_paired_with_the_sidecar_listed_just_before_them() -> None:
    s3 = MemoryS3()
    for name in ("00000.parquet", "00000.tar", "00000_stats.json", "00001.tar", "00002.parquet", "00003.tar.gz"):
        s3.put(B, f"d/{name}", b"x")
    shards = list(list_shards(s3, options("webdataset"), page_size=2, start_after=""))
    assert [("d/00000.tar", "d/00000.parquet"), ("d/00001.tar", None), ("d/00003.tar.gz", None)] == [
        (s.key, s.sidecar.key if s.sidecar else None) for s in shards
    ]


def collection(s3: MemoryS3, shards: int = 3, per: int = 4) -> list[str]:
    keys = []
    for n in range(shards):
        names = [f"{n}{i:03d}" for i in range(per)]
        s3.put(B, f"d/{n:05d}.tar", tar_shard([img2dataset_sample(k, images.solid()) for k in names]))
        keys += names
    return keys


def test_a_resume_restarts_the_current_shard_after_the_rows_already_sent() -> None:
    s3 = MemoryS3()
    keys = collection(s3)
    resume = Resume(last_key="d/00000.tar", shard_key="d/00001.tar", pos=3, etag=s3.etag(B, "d/00001.tar"))
    units = [u for page in dataset_pages(s3, options("webdataset"), page_size=2, resume=resume) for u in page]
    assert keys[4 + 3 :] == [u.key for u in units if isinstance(u, Sample)]
    assert ["d/00001.tar", "d/00002.tar"] == [u.shard.key for u in units if isinstance(u, ShardDone)]
    assert 4 == next(u for u in units if isinstance(u, ShardDone)).summary.jobs  # the whole shard, not the rest


def test_a_resume_refuses_a_shard_that_changed_or_vanished() -> None:
    s3 = MemoryS3()
    collection(s3)
    changed = Resume(last_key="d/00000.tar", shard_key="d/00001.tar", pos=1, etag="0" * 32)
    with pytest.raises(PermanentError, match="changed since the backfill started sending it"):
        list(dataset_pages(s3, options("webdataset"), page_size=10, resume=changed))
    gone = Resume(last_key="d/00000.tar", shard_key="d/00001b.tar", pos=1)
    with pytest.raises(PermanentError, match="no longer listed"):
        list(dataset_pages(s3, options("webdataset"), page_size=10, resume=gone))


def test_results_files_keep_the_shards_relative_name_and_are_deterministic() -> None:
    assert ("out", "v/00000.parquet") == results_object("s3://out/v", "data/wds/", "data/wds/00000.tar")
    assert ("out", "a/7.parquet") == results_object("s3://out", "data/", "data/a/7.parquet")
    row = {"key": "k", "index": 1, "job_id": "j", "rating": "Safe"}
    other = {"key": "k0", "index": 0, "job_id": "i", "error_code": "not_found"}
    assert parquet_bytes([row, other]) == parquet_bytes([other, row])
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(parquet_bytes([row, other])))
    assert (["k0", "k"], [None, "Safe"]) == (table.column("key").to_pylist(), table.column("rating").to_pylist())


def test_a_key_too_long_for_a_job_is_skipped_and_counted_not_a_crash() -> None:
    s3 = MemoryS3()
    long_key = "k" * 1100
    shard = shard_of(s3, "d/4.tar", tar_shard([(long_key, {"jpg": b"x"}), ("ok", {"jpg": b"y"})]))
    units = list(webdataset_samples(s3, shard))
    assert [("key_too_long", None), (None, "ok")] == [(s.skip, s.key if s.skip is None else None) for s in rows(units)]
    assert (2, 1, {"key_too_long": 1}) == (
        done(units).summary.rows,
        done(units).summary.jobs,
        done(units).summary.skipped,
    )
