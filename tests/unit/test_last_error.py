"""LastError: the kind travels in the text's prefix and reads back from it."""

import pytest

from livesnap.jobs.models import ErrorKind, LastError


@pytest.mark.parametrize("error", [
    LastError.stream("connection refused"),
    LastError.storage("snapshot not stored yet: the store has not answered"),
    LastError.quality("no usable keyframe in a tick (black)"),
])
def test_a_written_error_reads_back_as_its_kind_and_message(error):
    assert LastError.of(error.text) == error


def test_the_wire_text_is_the_prefix_and_the_message():
    assert LastError.storage("disk full").text == "storage: disk full"
    assert LastError.quality("frozen").text == "quality: frozen"
    assert LastError.stream("stream ended").text == "stream ended"


def test_a_cleared_error_shows_nothing_whatever_its_kind():
    assert LastError.stream("").text == LastError.storage("").text == LastError.quality("").text == ""
    assert LastError.of("").kind is ErrorKind.STREAM


def test_a_stream_message_that_merely_mentions_storage_is_a_stream_error():
    assert LastError.of("no storage: x").kind is ErrorKind.STREAM
