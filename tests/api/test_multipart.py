"""The lean multipart reader agrees with a real client's encoding and refuses malformed bodies."""

from __future__ import annotations

import httpx
import pytest

from src.serving.multipart import (
    MultipartError,
    PartTooLarge,
    TooManyFields,
    TooManyFiles,
    boundary_of,
    parse_parts,
)

LIMITS = {"max_files": 4, "max_fields": 2, "max_file_bytes": 1000, "max_field_bytes": 100}


def _encoded(
    files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str]
) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    body = request.read()
    return body, boundary_of(request.headers["content-type"])


def test_parses_what_httpx_sends_in_order() -> None:
    blobs = [
        b"\x89PNG\r\n\x1a\n" + bytes([i]) * (10 * i) + b"\r\n--not-the-boundary" for i in range(3)
    ]
    body, boundary = _encoded(
        [("files", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)],
        {"note": "héllo"},
    )
    parts = parse_parts(body, boundary, **LIMITS)
    files = [p for p in parts if p.filename is not None]
    assert [p.data for p in files] == blobs
    assert [p.filename for p in files] == ["0.png", "1.png", "2.png"]
    assert {p.content_type for p in files} == {"image/png"}
    (field,) = [p for p in parts if p.filename is None]
    assert (field.name, bytes(field.data).decode()) == ("note", "héllo")


def test_preamble_epilogue_and_padding_are_tolerated() -> None:
    body = (
        b"preamble\r\n--b  \r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        b"DATA\r\n--b--\r\nepilogue"
    )
    (part,) = parse_parts(body, b"b", **LIMITS)
    assert (part.name, part.filename, part.data) == ("file", "a.png", b"DATA")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", MultipartError),
        (b"no boundary at all", MultipartError),
        (b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nabc', MultipartError),
        (b"--b\r\nContent-Type: image/png\r\n\r\nabc\r\n--b--", MultipartError),
        (b"--b\r\nno colon here\r\n\r\nabc\r\n--b--", MultipartError),
        (b'--b\r\nContent-Disposition: form-data; name="f"\r\nabc\r\n--b--', MultipartError),
        (b"--b junk\r\n\r\n\r\n--b--", MultipartError),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_parts(body, b"b", **LIMITS)


def test_limits() -> None:
    body, boundary = _encoded([("f", (f"{i}", b"x", "image/png")) for i in range(5)], {})
    with pytest.raises(TooManyFiles):
        parse_parts(body, boundary, **LIMITS)
    body, boundary = _encoded([("f", ("0", b"x", "image/png"))], {"a": "1", "b": "2", "c": "3"})
    with pytest.raises(TooManyFields):
        parse_parts(body, boundary, **LIMITS)
    body, boundary = _encoded([("f", ("big", bytes(1001), "image/png"))], {})
    with pytest.raises(PartTooLarge, match="#0"):
        parse_parts(body, boundary, **LIMITS)
    with pytest.raises(MultipartError, match="boundary"):
        boundary_of("multipart/form-data")
