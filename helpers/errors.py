"""The one exception type for an expected failure: bad input, a missing key, a full disk.

Its message is the single line the user sees; tasks.py turns it into invoke's Exit, so
no traceback reaches anyone. Anything else that escapes is a bug and shows as one.
"""
from __future__ import annotations


class UserError(Exception):
    """What went wrong and what to do, in one line; `code` is the exit status."""

    def __init__(self, message: str = "", code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code
