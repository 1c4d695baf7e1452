"""Control characters: refused in every string gpucap is given, so that both databases store and
refuse exactly the same text (PostgreSQL cannot store NUL at all) and no id, name or log entry
carries bytes a terminal or a CSV reader would act on.

C0 controls (U+0000 to U+001F) are refused everywhere, except tab and newline in free text
(descriptions and notes in data files). A refusal names the character and its position.
"""

from __future__ import annotations

import re
from typing import Any

_C0 = re.compile(r"[\x00-\x1f]")
_C0_BUT_TAB_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f]")


def control_character(text: str, free_text: bool = False) -> str | None:
    """Why `text` is refused (the first control character and its position), or None."""
    found = (_C0_BUT_TAB_NEWLINE if free_text else _C0).search(text)
    if found is None:
        return None
    return f"control character U+{ord(found.group()):04X} at position {found.start()}"


def refuse_control(text: str) -> str:
    """A pydantic AfterValidator: `text`, or ValueError naming the control character."""
    reason = control_character(text)
    if reason is not None:
        raise ValueError(f"contains a {reason}")
    return text


def first_control(value: Any, path: str = "") -> tuple[str, str] | None:
    """(field path, reason) of the first string in a parsed document (mapping keys included)
    holding a control character other than tab or newline; None when there is none."""
    if isinstance(value, str):
        reason = control_character(value, free_text=True)
        return None if reason is None else (path or "(document)", f"contains a {reason}")
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                reason = control_character(key)
                if reason is not None:
                    return where, f"the key contains a {reason}"
            found = first_control(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = first_control(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
