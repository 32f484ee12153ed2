"""A lean ``multipart/form-data`` reader for image uploads.

Starlette's form parser (python-multipart's byte-by-byte tokenizer plus a
``SpooledTemporaryFile`` and ``UploadFile`` per file) costs ~75 µs per file: for a batch of small
images that is more than decoding them. The body is already capped in size by
:class:`~src.serving.limits.BodySizeLimitMiddleware` before any of it is read, so this reader
takes it into memory and splits it at the boundary with ``bytes.find``; part headers are parsed
with python-multipart's ``parse_options_header``. It enforces the number of files and fields,
the size of each part, and the number and length of part headers.
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
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def data(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


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


async def read_parts(
    stream: AsyncIterator[bytes],
    content_type: str,
    *,
    max_files: int,
    max_fields: int,
    max_file_bytes: int,
    max_field_bytes: int,
) -> list[Part]:
    """Read a multipart body (already capped in size by the limit middleware) into its parts,
    in order."""
    boundary = boundary_of(content_type)
    chunks = [chunk async for chunk in stream if chunk]
    return parse_parts(
        b"".join(chunks),
        boundary,
        max_files=max_files,
        max_fields=max_fields,
        max_file_bytes=max_file_bytes,
        max_field_bytes=max_field_bytes,
    )


def parse_parts(
    body: bytes,
    boundary: bytes,
    *,
    max_files: int,
    max_fields: int,
    max_file_bytes: int,
    max_field_bytes: int,
) -> list[Part]:
    """RFC 7578 / RFC 2046 multipart body → parts. Delimiters are found with ``bytes.find``
    (C speed); each part's headers go through python-multipart's ``parse_options_header``."""
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
            header_end = body.find(b"\r\n\r\n", start, end)
            if header_end < 0:
                raise MultipartError("A multipart part has no blank line after its headers.")
            header_block, content_start = body[start:header_end], header_end + 4
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
        part.size = end - content_start
        if part.size > limit:
            raise PartTooLarge(f"{what} is over the {limit} byte limit; send a smaller image.")
        part.chunks.append(body[content_start:end])
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
