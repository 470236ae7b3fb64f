"""Errors that lungseg reports to users.

Every error a user can cause by handing us a bad file, flag or folder is a :class:`LungsegError`.
The CLI prints its message on one line and exits non-zero instead of showing a traceback, so each
message must say which file (or flag) is wrong and what the problem is.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import warnings
from collections.abc import Sequence


class LungsegError(Exception):
    """A problem with the user's input, reported as one clear line.

    Args:
        message: what is wrong and, where possible, how to fix it.
        path: the file or folder the problem is about; prefixed to the message.
    """

    def __init__(self, message: str, path: object | None = None) -> None:
        self.path = None if path is None else str(path)
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


def quiet_third_party() -> None:
    """Keep the decoders' own reports about bad files off the terminal.

    Pillow warns (``DecompressionBombWarning``, ``Corrupt EXIF data``...) and OpenCV logs
    (``[ERROR:0] imdecode_...``) about files that lungseg then refuses or reads anyway, each with
    a library path; the user is to see lungseg's one line naming the file instead. Called by
    the command line and by the worker processes it starts; a program that imports lungseg keeps
    its own settings. Imports nothing heavy: OpenCV reads its level from the environment when it
    is first imported (worker processes inherit it).
    """
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    if "cv2" in sys.modules:
        cv2 = sys.modules["cv2"]
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


#: What a user can do about the OS errors they meet most, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EROFS: "write to a writable disk",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "expected a file there, found a folder",
    errno.EEXIST: "something of that name is in the way",
    errno.ELOOP: "a symbolic link points back at itself",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EFBIG: "the file outgrows a size limit of this system or process",
}


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: ``PATH: reason (what to do)``; the path is its
    ``filename`` (and ``filename2`` for a rename)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _OS_ADVICE.get(exc.errno or 0)
    text = f"{reason} ({advice})" if advice else reason
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {text}" if paths else text


class LockBusy(LungsegError):
    """Another process holds the lock asked for."""


class LockLost(LungsegError):
    """This process lost its hold on an output (an Azure lease ran out while it was stopped or
    cut off, and another process may have taken over): it stops before writing again."""


_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, lines: bool = False) -> str:
    """``text`` safe to print on a terminal: control characters (ESC, BEL, a carriage return,
    which a file or blob name may hold) are shown as ``\\x1b``...; newlines too unless
    ``lines`` (a message of several lines), and bytes a local name had that are not UTF-8."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    shown = _TERMINAL_CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), text)
    return shown if lines else shown.replace("\n", "\\n")


class BadInputError(LungsegError):
    """Several bad input files, all reported at once."""

    def __init__(self, problems: Sequence[tuple[str, str]], hint: str = "") -> None:
        self.problems = list(problems)
        lines = [f"{path}: {problem}" for path, problem in self.problems]
        head = f"{len(lines)} problem(s) found in the input"
        text = head + ":\n  " + "\n  ".join(lines)
        if hint:
            text += "\n" + hint
        super().__init__(text)
