"""One error type for every bad input, so the CLI can print it as a single line."""

from __future__ import annotations

from os import PathLike


class MedtransError(Exception):
    """A problem the user can fix: names the file, says what is wrong and what to do.

    The CLI prints ``str(err)`` on one line and exits non-zero (no traceback unless ``--debug``).
    """

    def __init__(self, path: str | PathLike | None, problem: str, fix: str) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem} ({fix})".replace("\n", " "))
