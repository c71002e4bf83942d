"""The store's error types: one root, each message one line naming the problem and what to do."""

from __future__ import annotations


class StoreError(Exception):
    """A workspace database problem, with a one-line message naming it and what to do."""


class NotFoundError(StoreError):
    """A row looked up by id or name does not exist."""


class OutdatedSchemaError(StoreError):
    """A read-only open found a database made by an older refact-tui (reads never migrate)."""

    def __init__(self, path: str, found: int, expected: int) -> None:
        self.found, self.expected = found, expected
        super().__init__(
            f"the workspace database {path} was made by an older refact-tui (schema {found} < {expected}); "
            "run `refact migrate` (or any write command) to upgrade it"
        )


class CorruptDatabaseError(StoreError):
    """The workspace database is damaged or breaks an invariant the code relies on."""

    def __init__(self, what: str) -> None:
        self.what = " ".join(str(what).split())
        super().__init__(
            f"not a valid workspace database: {self.what}; restore it from a backup or run `refact doctor`"
        )


__all__ = ["CorruptDatabaseError", "NotFoundError", "OutdatedSchemaError", "StoreError"]
