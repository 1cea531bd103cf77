"""Dataset jobs on the wire: shard members (tar byte range, Parquet cell, absent image) and the sample a job is."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.dataset import AbsentMember, DatasetSample, ParquetCell, TarMember
from schemas.errors import ErrorCode
from schemas.job import ImageRef, ModerationJob


def test_a_dataset_job_round_trips_with_its_member_and_sample() -> None:
    job = ModerationJob(
        image=ImageRef(
            uri="s3://data/wds/00000.tar", etag="abc", member=TarMember(name="000001.jpg", offset=1536, length=4242)
        ),
        sample=DatasetSample(shard="s3://data/wds/00000.tar", key="000001", index=1),
        backfill_id="bf-0123456789abcdef",
    )
    again = ModerationJob.model_validate(job.to_message())
    assert job == again
    assert {"kind": "tar", "name": "000001.jpg", "offset": 1536, "length": 4242} == job.to_message()["image"]["member"]
    assert "s3://data/wds/00000.tar#000001.jpg" == str(job.image)


@pytest.mark.parametrize(
    ("member", "text"),
    [
        (ParquetCell(column="jpg", row_group=2, row=7), "s3://d/x.parquet#jpg[2:7]"),
        (AbsentMember(name="0042", message="no image member"), "s3://d/x.parquet#0042"),
    ],
)
def test_every_member_kind_names_its_row_in_the_image_text(member: ParquetCell | AbsentMember, text: str) -> None:
    ref = ImageRef.model_validate({"uri": "s3://d/x.parquet", "member": member.model_dump()})
    assert (member, text) == (ref.member, str(ref))


@pytest.mark.parametrize(
    "member",
    [
        {"kind": "tar", "name": "a.jpg", "offset": -1, "length": 3},
        {"kind": "tar", "name": "", "offset": 0, "length": 3},
        {"kind": "parquet", "column": "jpg", "row_group": 0},
        {"kind": "absent", "name": "k", "code": "internal_error", "message": "x"},
        {"kind": "zip", "name": "a.jpg"},
    ],
    ids=["negative-offset", "no-name", "no-row", "code-not-allowed", "unknown-kind"],
)
def test_malformed_members_are_refused(member: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ImageRef.model_validate({"uri": "s3://d/x.tar", "member": member})


def test_a_member_is_only_read_from_an_s3_object() -> None:
    with pytest.raises(ValidationError, match="only be read from an s3:// object"):
        ImageRef(uri="https://example.com/x.tar", member=TarMember(name="a.jpg", offset=0, length=1))


def test_an_absent_member_keeps_its_failure_code() -> None:
    member = AbsentMember(name="k", code=ErrorCode.FORBIDDEN_SOURCE, message="row k: file:// is not allowed")
    again = ImageRef.model_validate_json(ImageRef(uri="s3://d/x.parquet", member=member).model_dump_json())
    assert isinstance(again.member, AbsentMember) and ErrorCode.FORBIDDEN_SOURCE == again.member.code


def test_existing_references_are_unchanged() -> None:
    assert {"uri": "s3://b/k.jpg"} == ImageRef.parse("s3://b/k.jpg").model_dump(exclude_none=True)
