"""One error hierarchy for everything mongoferry reports to a user.

    MongoferryError (exit 1, unexpected)
    ├── UsageError (exit 2)            bad flags, config file, namespaces, unsafe destination
    ├── ConnectError (exit 3)          host unreachable, DNS, TLS
    │   └── AuthError (exit 3)         wrong user or password
    └── InconsistencyError (exit 4)    the data is not what it must be
        └── HistoryLostError (exit 4)  the source no longer holds the saved position

Every error carries a one-line message and a hint saying what to do. Driver
errors are translated into this hierarchy at the boundary (clients.py), never
by matching message strings elsewhere.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_INCONSISTENT = 4


class MongoferryError(Exception):
    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(MongoferryError):
    exit_code = EXIT_USAGE


class ConnectError(MongoferryError):
    exit_code = EXIT_CONNECT


class AuthError(ConnectError):
    pass


class InconsistencyError(MongoferryError):
    exit_code = EXIT_INCONSISTENT


class HistoryLostError(InconsistencyError):
    pass
