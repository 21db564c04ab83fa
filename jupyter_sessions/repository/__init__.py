"""The store: tables, migrations, and the repositories every other layer goes through."""

from .db import Database
from .repository import Scope, SessionRepository

__all__ = ["Database", "Scope", "SessionRepository"]
