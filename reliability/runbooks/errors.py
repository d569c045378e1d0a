"""Every error the runbooks domain raises on purpose, under one base, `RunbookError`.

`bad_input` says whose fault it is: True when what the caller gave cannot be used (a
parameter, a runbook that cannot plan on this config: exit 2 on the command line), False
when the operation itself could not go on (a lock held by another run, a run in the wrong
state, no such run: exit 1). Messages are written for the operator and name the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class RunbookError(Exception):
    """Base of every runbook error; `bad_input` as the module says."""

    bad_input: ClassVar[bool] = False


class Locked(RunbookError):
    """Another live run holds a service this run needs."""


class NoSuchRun(RunbookError, LookupError):
    """No run has this id."""


class NoSuchRunbook(RunbookError, LookupError):
    """No runbook of `runbooks_dir` has this name: the command line names what is not there."""

    bad_input = True


class WrongRunState(RunbookError):
    """The run is not in a state that allows this (resume a run that is not interrupted)."""


class ParamError(RunbookError, ValueError):
    """Parameters that cannot be used. `lines` holds one message per problem."""

    bad_input = True

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


class ScopeError(RunbookError, ValueError):
    """A placeholder names something the config does not have (a node without a pool)."""

    bad_input = True


class PlanError(RunbookError, ValueError):
    """The runbook cannot run with these parameters on this config (a group selects no
    node, a placeholder names something the config lacks)."""

    bad_input = True


class BrokenRunbook(RunbookError, ValueError):
    """The runbook's file has problems (`lines`, each FILE:LINE: field: problem): it
    cannot run until they are fixed; the other runbooks still can."""

    bad_input = True

    def __init__(self, name: str, lines: Iterable[str]) -> None:
        self.lines = list(lines)
        super().__init__(
            f"runbook {name} cannot be used, its file has problems:\n" + "\n".join(self.lines)
        )
