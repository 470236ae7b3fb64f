"""Reading an uploaded X-ray from a request, in memory only, within the size limit.

The body is either the file itself (any ``Content-Type``; the format is read from the content) or
``multipart/form-data`` with the file in the field ``file``. Starlette's form parser would spool
a part over 1 MB to a temporary file; an X-ray is patient data and must not touch the disk, so
the multipart body is parsed here as it streams in, keeping only the ``file`` part in memory.
A declared ``Content-Length`` over the limit is refused before a byte is read.
"""

from __future__ import annotations

from starlette.requests import Request

from lungseg.serve.pipeline import ServeError

#: Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
FIELD = "file"


async def read_upload(request: Request, limit: int) -> bytes:
    """The uploaded file's bytes.

    Raises:
        ServeError: 413 over ``limit`` bytes, 400 for a malformed multipart body or one
            without a ``file`` field.
    """
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    allowed = limit + (MULTIPART_OVERHEAD if multipart else 0)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > allowed:
        raise _too_large(limit)
    parser = _FilePart(content_type) if multipart else None
    body = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > allowed:
            raise _too_large(limit)
        if parser is None:
            body += chunk
        else:
            parser.feed(chunk)
    if parser is None:
        return bytes(body)
    data = parser.result()
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> ServeError:
    return ServeError(413, f"file larger than the {limit / 2**20:g} MB upload limit")


class _FilePart:
    """A streaming multipart parser that keeps the bytes of the ``file`` field only."""

    def __init__(self, content_type: str) -> None:
        from python_multipart import MultipartParser
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise ServeError(400, "multipart/form-data without a boundary")
        self._data = bytearray()
        self._found = False
        self._in_file = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except Exception:
            raise ServeError(400, "malformed multipart/form-data body") from None

    def result(self) -> bytes:
        try:
            self._parser.finalize()
        except Exception:
            raise ServeError(400, "malformed multipart/form-data body") from None
        if not self._found:
            raise ServeError(400, f"multipart upload without a field named '{FIELD}'")
        return bytes(self._data)

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._in_file = options.get(b"name") == FIELD.encode() and not self._found

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._data += data[start:end]

    def _part_end(self) -> None:
        if self._in_file:
            self._found = True
            self._in_file = False
