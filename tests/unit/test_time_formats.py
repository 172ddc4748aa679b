"""The instants and HTTP dates written into resources and headers, from the microsecond epoch times the store keeps."""

from datetime import UTC, datetime, timedelta

import pytest

from hifhir.api.http import http_date
from hifhir.fhir.kind import instant

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("us", [0, 1, 999_999, -1, 1_764_000_000_123_456, -62_135_596_800_000_000,
                                253_402_300_799_999_999, -5_000_000_000_000_001])
def test_an_instant_is_the_stored_time_to_the_microsecond(us: int) -> None:
    exact = (EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert instant(us) == exact


def test_instants_of_one_second_differ_in_their_microseconds_only() -> None:
    assert instant(1_764_000_000_000_001) == "2025-11-24T16:00:00.000001Z"
    assert instant(1_764_000_000_999_999) == "2025-11-24T16:00:00.999999Z"


def test_an_http_date_is_the_whole_second_in_imf_fixdate() -> None:
    assert http_date(1_764_000_000_999_999) == "Mon, 24 Nov 2025 16:00:00 GMT"
    assert http_date(1_764_000_001_000_000) == "Mon, 24 Nov 2025 16:00:01 GMT"
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
