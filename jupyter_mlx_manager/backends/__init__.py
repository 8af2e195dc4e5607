"""Backends behind the pool other than local runners: remote OpenAI-compatible upstreams."""

from .remote import RemoteBackend, RemoteBackends, UpstreamUnavailable, parse_backends

__all__ = ["RemoteBackend", "RemoteBackends", "UpstreamUnavailable", "parse_backends"]
