"""Names as file systems and Azure allow them, made safe for what ``segment`` writes them into.

A key (an image's path relative to the input) may hold anything its storage allows: a carriage
return, ESC or BEL, 255 bytes in one part, bytes that are not UTF-8 (Linux), ``..`` (a blob
name). Three places must not be hurt by it:

* **output files**: a key that cannot be a file name as it is (control characters, a part too
  long for the temporary name beside it, ``.``/``..``/empty parts) names its outputs by its hash
  (:func:`output_stem`); the CSVs keep the key itself;
* **CSV files**: a cell that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``)
  gets a leading ``'`` (:func:`spreadsheet_cell`), and a ``problem`` stays on one line;
* **the terminal**: control characters are shown escaped (:func:`lungseg.core.errors.printable`).

Local names that are not UTF-8 become keys with those bytes written ``\\xNN``
(:func:`key_text`), so every key is text that UTF-8 files, hashes and JSON can hold.
"""

from __future__ import annotations

import hashlib
import re

#: Longest part of a key (bytes) kept as a file name: 255 minus the output's extension and the
#: temporary name an atomic write uses beside it.
MAX_PART_BYTES = 200
#: Longest key (bytes) kept as an output path (Azure allows 1,024 characters in a blob name).
MAX_KEY_BYTES = 900
#: Outputs of keys named by their hash live in this folder of masks/, overlays/, dicom-seg/.
HASHED = "~hashed"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"\s*[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+\s*")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def key_text(name: str) -> str:
    """A local path as text: bytes that are not UTF-8 (decoded by Python as surrogates) are
    written ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_plain(key: str) -> bool:
    """Whether ``key`` can name its output files as it is."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES or "\\" in key or _CONTROL.search(key):
        return False
    return all(
        part not in ("", ".", "..") and len(part.encode("utf-8")) <= MAX_PART_BYTES
        for part in key.split("/")
    )


def output_stem(key: str) -> str:
    """The path its outputs are named by (before their extension): the key itself, or
    ``~hashed/<SHA-256 of the key>`` when it cannot be a file name as it is."""
    if is_plain(key):
        return key
    return f"{HASHED}/{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def spreadsheet_cell(value: str) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text: a leading ``'`` before what would
    start a formula (OWASP's advice on CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def one_line(text: str) -> str:
    """``text`` with its line breaks (and the blanks around them) turned into one space."""
    return _LINE_BREAKS.sub(" ", text)
