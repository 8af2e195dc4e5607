"""SQLite storage shared by every service of the extension."""

from .database import Database, DatabaseError, utcnow

__all__ = ["Database", "DatabaseError", "utcnow"]
