"""A body that fails its checksum is read again; five failures in a row are one clear error."""

import pytest
from botocore.exceptions import FlexibleChecksumError

from mongoferry.core.errors import ConnectError
from mongoferry.infra.storage import CHECKSUM_ATTEMPTS, _reraise_unless_checksum


def test_a_checksum_mismatch_is_read_again_until_the_last_attempt() -> None:
    exc = FlexibleChecksumError(error_msg="Expected checksum a did not match calculated checksum: b")
    for attempt in range(CHECKSUM_ATTEMPTS - 1):
        _reraise_unless_checksum(exc, attempt, "s3://b/p", "manifest.json")  # returns: read again
    with pytest.raises(ConnectError, match="failed its checksum 5 times"):
        _reraise_unless_checksum(exc, CHECKSUM_ATTEMPTS - 1, "s3://b/p", "manifest.json")


def test_other_errors_are_not_retried_here() -> None:
    with pytest.raises(KeyError):
        _reraise_unless_checksum(KeyError("x"), 0, "s3://b/p", "k")
