"""Errors a user can act on: each says what was wrong, where, and how to fix it."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """A ' did you mean X?' suffix when a close match exists, else ''."""
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


_OS_CAUSE = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")


def first_line(error: BaseException, limit: int = 300) -> str:
    """An error's first line of text (libraries often append pages of detail); for a
    wrapped OS error (a refused connection deep in an HTTP library's text), that error."""
    text = str(error).strip()
    cause = _OS_CAUSE.search(text)
    if cause and len(text) > limit // 2:
        return cause.group(0).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: which key, what was found, what is allowed, a hint."""

    key: str
    found: object
    expected: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.key}: found {self.found!r}; expected {self.expected}"
        return f"{text} — {self.hint}" if self.hint else text


class PtflowError(Exception):
    """Base of every error ptflow reports to a user without a traceback."""

    exit_code = 1


class ConfigError(PtflowError):
    """Every problem found in a config, collected before any heavy work starts."""

    exit_code = 2

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        lines = [f"{len(self.problems)} config problem(s):"]
        lines += [f"  - {p.render()}" for p in self.problems]
        super().__init__("\n".join(lines))

    @classmethod
    def single(cls, key: str, found: object, expected: str, hint: str = "") -> "ConfigError":
        return cls([Problem(key, found, expected, hint)])

    def prefixed(self, prefix: str) -> "ConfigError":
        """The same problems with their keys placed under `prefix`."""
        return ConfigError(
            Problem(f"{prefix}.{p.key}" if p.key else prefix, p.found, p.expected, p.hint)
            for p in self.problems
        )


def invalid_choice(key: str, found: object, allowed: Iterable[object]) -> ConfigError:
    """ConfigError for a value outside a closed set, listing the set and a close match."""
    allowed = list(allowed)
    return ConfigError.single(
        key, found, "one of " + ", ".join(repr(str(a)) for a in allowed), did_you_mean(found, allowed)
    )


class InputError(PtflowError):
    """Bad user input found while running (a checkpoint that does not fit, NaN outputs...)."""


class Rejected(PtflowError):
    """A stage measured the candidate and found it unacceptable (e.g. accuracy.enforce): the
    evidence is recorded first, then the run stops before any later stage (export) runs."""


class StageError(PtflowError):
    """A stage failed; names the stage and carries the cause."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        self.cause = cause
        kind = "" if isinstance(cause, PtflowError) else f"{type(cause).__name__}: "
        super().__init__(f"stage '{stage}' failed: {kind}{cause}")
