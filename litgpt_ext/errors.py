"""User errors: one line ``path:line: field: what is wrong``, exit code 2, no traceback.

Code that detects bad *input* raises :class:`UserError`; the CLI prints it and exits 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INCOMPLETE = 3
"""The command ran without error but work is left undone (budget reached, batches still running, verdicts missing):
rerun the same command to continue. Shell pipelines must not go on to the next stage."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    def __init__(
        self, message: str, path: str | Path | None = None, line: int | str | None = None, field: str | None = None
    ) -> None:
        self.path, self.line, self.field, self.reason = path, line, field, message
        location = ""
        if path is not None:
            location = str(path)
            if line is not None:
                location += f":{line}"
            location += ": "
        if field is not None:
            location += f"{field}: "
        super().__init__(location + message)


def require(value, flag: str):
    """For commands whose inputs are flags (``--records R``): a missing one is a user error, not a traceback."""
    if value is None:
        raise UserError(f"--{flag} is required", field=flag)
    return value


class ResumableStop(UserError):
    """Work that must stop mid-run for a reason outside the run (a teacher server that went away): the training loop
    saves a checkpoint of the last finished step first, so ``--resume auto`` continues where it stopped."""
