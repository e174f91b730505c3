import pytest
from hypothesis import given
from hypothesis import strategies as st

from livesnap.errors import InvalidParameter
from livesnap.jobs.naming import check_overwrite_format, check_sequence_format, render_key


def test_render_all_placeholders_uses_ms_and_utc_date():
    key = render_key(
        "snap/{JobId}/{Date}/{Sequence}-{UnixTimestamp}.jpg",
        job_id="j1",
        create_ms=1_704_067_199_999,  # 2023-12-31T23:59:59.999Z
        sequence=7,
    )
    assert key == "snap/j1/2023-12-31/7-1704067199999.jpg"


def test_render_overwrite_has_only_job_id():
    assert render_key("snapshot/{JobId}.jpg", job_id="abc", create_ms=1, sequence=None) == (
        "snapshot/abc.jpg"
    )


@pytest.mark.parametrize(
    "fmt",
    ["snapshot/{JobId}.jpg", "a.jpg", "x/y/z-{JobId}-latest.jpg"],
)
def test_valid_overwrite_formats(fmt):
    check_overwrite_format(fmt)


@pytest.mark.parametrize(
    ("fmt", "fragment"),
    [
        ("/snapshot/{JobId}.jpg", "must not start with '/'"),
        ("snapshot/{JobId}.gif", "must end with '.jpg'"),
        ("snapshot/{UnixTimestamp}.jpg", "{UnixTimestamp}"),
        ("snapshot/{Sequence}.jpg", "{Sequence}"),
        ("snapshot/{Date}.jpg", "{Date}"),
        ("snapshot/{Nope}.jpg", "{Nope}"),
        ("snapshot/{JobId.jpg", "unbalanced"),
        ("a/../b.jpg", "'..'"),
        ("a//b.jpg", "empty"),
        ("a/\x01.jpg", "control"),
        ("x" * 252 + ".jpg", "at most 255"),
    ],
)
def test_invalid_overwrite_formats(fmt, fragment):
    with pytest.raises(InvalidParameter) as info:
        check_overwrite_format(fmt)
    assert fragment in info.value.message


def test_sequence_format_needs_a_unique_part():
    with pytest.raises(InvalidParameter, match=r"\{UnixTimestamp\} or \{Sequence\}"):
        check_sequence_format("snapshot/{JobId}/{Date}.jpg")
    check_sequence_format("snapshot/{JobId}/{Date}/{Sequence}.jpg")
    check_sequence_format("snapshot/{JobId}/{UnixTimestamp}.jpg")


@given(st.integers(min_value=0, max_value=2**41), st.integers(min_value=1, max_value=10**9))
def test_distinct_captures_get_distinct_keys(ms, seq):
    fmt = "s/{JobId}/{UnixTimestamp}.jpg"
    a = render_key(fmt, job_id="j", create_ms=ms, sequence=seq)
    b = render_key(fmt, job_id="j", create_ms=ms + 1, sequence=seq)
    assert a != b
    assert a.endswith(f"/{ms}.jpg")
