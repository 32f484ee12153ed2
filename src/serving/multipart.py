"""A lean ``multipart/form-data`` reader for image uploads.

The body is already capped in size (and counted against the global in-flight budget) by
:class:`~src.serving.limits.RequestLimitsMiddleware` before any of it is read. :func:`read_body`
collects it into ONE buffer; :func:`parse_parts` (run off the event loop) splits it at the boundary
with ``bytes.find`` and hands out each part's content as a ``memoryview`` of that buffer (no copy).
Part headers are looked for only within ``MAX_HEADER_BLOCK`` bytes of the part's start, so a
giant header block costs no more than a small one. It enforces the number of files and fields,
the size of each part, and the number and length of part headers. ``benchmarks/bench_api.py``
compares it with python-multipart's parser.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import parse_options_header


class MultipartError(ValueError):
    """The body is not usable multipart data; ``status`` is the HTTP answer."""

    status = 400
    error = "malformed_multipart"


class TooManyFiles(MultipartError):
    status = 413
    error = "too_many_files"


class TooManyFields(MultipartError):
    status = 413
    error = "too_many_fields"


class PartTooLarge(MultipartError):
    status = 413
    error = "file_too_large"


@dataclass
class Part:
    name: str
    filename: str | None  # None: a plain form field, not a file upload
    content_type: str | None = None
    data: memoryview = field(default_factory=lambda: memoryview(b""))

    @property
    def size(self) -> int:
        return len(self.data)


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise MultipartError("The body is not multipart/form-data.")
    boundary = options.get(b"boundary")
    if not boundary:
        raise MultipartError(
            "The multipart Content-Type has no boundary; let your HTTP client build the body "
            "(e.g. curl -F file=@image.png)."
        )
    if len(boundary) > 200:
        raise MultipartError("The multipart boundary is longer than 200 characters.")
    return boundary


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


MAX_PART_HEADERS = 8
MAX_HEADER_LINE = 4096
MAX_HEADER_BLOCK = MAX_PART_HEADERS * (MAX_HEADER_LINE + 2)


async def read_body(stream: AsyncIterator[bytes]) -> bytearray:
    """The whole body (already capped in size by the limit middleware) in one buffer."""
    body = bytearray()
    async for chunk in stream:
        body += chunk
    return body


def parse_parts(
    body: bytes | bytearray,
    boundary: bytes,
    *,
    max_files: int,
    max_fields: int,
    max_file_bytes: int,
    max_field_bytes: int,
) -> list[Part]:
    """RFC 7578 / RFC 2046 multipart body → parts. Delimiters are found with ``bytes.find``
    (C speed); each part's headers go through python-multipart's ``parse_options_header``."""
    view = memoryview(body)
    delimiter = b"--" + boundary
    separator = b"\r\n" + delimiter
    if body.startswith(delimiter):
        position = len(delimiter)
    else:  # a preamble before the first delimiter
        first = body.find(separator)
        if first < 0:
            raise MultipartError("The multipart body has no boundary line; it is not form data.")
        position = first + len(separator)
    parts: list[Part] = []
    files = fields = 0
    while True:
        if body.startswith(b"--", position):
            return parts  # the close delimiter; anything after it is the ignored epilogue
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise MultipartError(
                "The multipart body ended before its closing boundary; send the whole body."
                if line_end < 0
                else "The multipart boundary line has trailing garbage."
            )
        start = line_end + 2
        end = body.find(separator, start)
        if end < 0:
            raise MultipartError(
                "The multipart body ended before its closing boundary; send the whole body."
            )
        if body.startswith(b"\r\n", start):
            header_block, content_start = b"", start + 2
        else:
            scan_end = min(end, start + MAX_HEADER_BLOCK)  # bounded: never scan a huge block
            header_end = body.find(b"\r\n\r\n", start, scan_end)
            if header_end < 0:
                raise MultipartError(
                    "A multipart part has no blank line after its headers"
                    + (" within the first 32 KiB." if scan_end < end else ".")
                )
            header_block, content_start = bytes(body[start:header_end]), header_end + 4
        part = _part_from_headers(header_block)
        if part.filename is not None:
            files += 1
            if files > max_files:
                raise TooManyFiles(f"Too many files: at most {max_files} per request.")
            limit = max_file_bytes
            what = f"File #{files - 1} ({part.filename or 'unnamed'})"
        else:
            fields += 1
            if fields > max_fields:
                raise TooManyFields(f"Too many form fields: at most {max_fields}.")
            limit = max_field_bytes
            what = f"Form field {part.name!r}"
        if end - content_start > limit:
            raise PartTooLarge(f"{what} is over the {limit} byte limit; send a smaller image.")
        part.data = view[content_start:end]
        parts.append(part)
        position = end + len(separator)


def _part_from_headers(block: bytes) -> Part:
    headers: dict[bytes, bytes] = {}
    lines = block.split(b"\r\n") if block else []
    if len(lines) > MAX_PART_HEADERS:
        raise MultipartError(f"A multipart part has more than {MAX_PART_HEADERS} headers.")
    for line in lines:
        if len(line) > MAX_HEADER_LINE:
            raise MultipartError("A multipart part header is longer than 4096 bytes.")
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise MultipartError("A multipart part header is not 'Name: value'.")
        headers[name.strip().lower()] = value.strip()
    disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
    if disposition != b"form-data" or b"name" not in options:
        raise MultipartError('A multipart part lacks Content-Disposition: form-data; name="..."')
    filename = options.get(b"filename")
    part_type = headers.get(b"content-type")
    return Part(
        name=_decode(options[b"name"]),
        filename=_decode(filename) if filename is not None else None,
        content_type=_decode(part_type) if part_type is not None else None,
    )
