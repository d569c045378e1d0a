"""What every config model is made of: strict models (unknown keys are errors, values
frozen) and string checks whose error says what to write."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


def matching(pattern: str, hint: str) -> AfterValidator:
    """A string check whose error tells the user what to write, not the regular expression."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r}: {hint}")
        return value

    return AfterValidator(check)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Name = Annotated[
    str, matching(r"[a-z0-9][a-z0-9._-]{0,62}", "use lowercase letters, digits, '.', '_', '-'")
]
