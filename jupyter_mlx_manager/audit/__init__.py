"""The audit trail: who did what, when, with which model, and how it went."""

from .log import AuditLog, Subscription

__all__ = ["AuditLog", "Subscription"]
