"""Errors that lungseg reports to users.

Every error a user can cause by handing us a bad file, flag or folder is a :class:`LungsegError`.
The CLI prints its message on one line and exits non-zero instead of showing a traceback, so each
message must say which file (or flag) is wrong and what the problem is.
"""

from __future__ import annotations

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
