"""The one user-facing error type, translated to a message and exit code at the top."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class DevenvError(Exception):
    """Something the user should read: what went wrong and what to do next."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []


class UsageError(DevenvError):
    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Problem:
    """One problem found in the configuration, located as precisely as we can."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(DevenvError):
    """The configuration is invalid; carries every problem found, not just the first."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[Problem], *, hint: str | None = None):
        count = len(problems)
        super().__init__(
            f"invalid configuration ({count} problem{'s' if count != 1 else ''})",
            hint=hint or "fix the lines above, then check with `devenv config validate`",
            details=[str(p) for p in problems],
        )
        self.problems = problems
