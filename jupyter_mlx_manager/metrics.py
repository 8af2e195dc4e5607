"""Prometheus metrics in Jupyter's own `/metrics` (SPEC "Observability").

jupyter_server serves `prometheus_client.REGISTRY` at `/metrics` (authenticated unless
`c.ServerApp.authenticate_prometheus = False`); the extension adds its metrics there:

- counters and the TTFT histogram are updated from the audit path: a listener on
  `AuditLog.listeners` sees each committed inference record (those with an `endpoint`);
- gauges (loaded models, their memory, queue depth per model) are read at scrape time by a
  collector, from in-memory state only (no I/O, nothing awaited);
- download bytes are counted from the download manager's `byte_listeners` hook when it has
  one (each call: bytes newly transferred).

`install(app)` registers everything for one `MLXManager`; `uninstall()` (from
`stop_extension`) removes it again. Several servers in one process (the tests) each get
fresh metrics: installing for another app first uninstalls the previous one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Model ids are validated (≤ 256 characters) but anyone may ask for many that do not exist:
# a failed request for a model never served nor loaded is counted under OTHER, and at most
# MAX_MODEL_LABELS distinct model labels are ever made.
MAX_MODEL_LABELS = 200
OTHER = "(other)"
TOKEN_KINDS = (("prompt", "prompt_tokens"), ("completion", "completion_tokens"), ("cached", "cached_tokens"))


class _Gauges:
    """A collector of the gauges, read from the app's pool and limits at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        app = self.metrics.app
        families = self._families()
        if app is None:
            yield from families
            return
        loaded_gauge, memory, queue, downloaded, speculative = families
        try:
            loaded = list(app.pool.loaded_models())
        except Exception:  # never fail a scrape
            loaded = []
        loaded_gauge.add_metric([], len(loaded))
        models = []
        for model in loaded:
            models.append(model.model_id)
            with contextlib.suppress(Exception):
                memory.add_metric([model.model_id], model.memory_bytes)
            with contextlib.suppress(Exception):
                drafts = model.speculative_status()
                if drafts is not None:  # counted by the runner: starts again with a new runner
                    speculative.add_metric([model.model_id, "accepted"], drafts["accepted_tokens"])
                    speculative.add_metric([model.model_id, "rejected"], drafts["rejected_tokens"])
        limits = getattr(app, "limits", None)
        if limits is not None:
            # Models with requests admitted or waiting (one being loaded has a queue too).
            models += [m for m in limits.models() if m not in models]
            for model_id in models:
                with contextlib.suppress(Exception):
                    queue.add_metric([model_id], limits.queue_depth(model_id))
        downloaded.add_metric([], self.metrics.download_bytes)
        yield from families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            GaugeMetricFamily("mlx_manager_loaded_models", "Models loaded in the pool"),
            GaugeMetricFamily(
                "mlx_manager_model_memory_bytes",
                "Memory of each loaded model (its runner's resident memory, else the estimate)",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "mlx_manager_queue_depth", "Requests waiting for a decoding slot of a model", labels=["model"]
            ),
            CounterMetricFamily(
                "mlx_manager_download_bytes", "Bytes transferred by model downloads since the server started"
            ),
            CounterMetricFamily(
                "mlx_manager_speculative_tokens",
                "Draft tokens of speculative decoding, accepted or rejected, per loaded model (since its runner started)",
                labels=["model", "result"],
            ),
        ]


class Metrics:
    """The metrics of one server app (see the module docstring)."""

    def __init__(self, app: Any = None, registry: CollectorRegistry | None = REGISTRY):
        self.app = app
        self.registry = registry
        self.requests = Counter(
            "mlx_manager_requests_total",
            "Inference requests by model, endpoint and final status",
            ["model", "endpoint", "status"],
            registry=None,
        )
        self.tokens = Counter(
            "mlx_manager_tokens_total",
            "Tokens of inference requests by model and kind (prompt, completion, cached prompt tokens)",
            ["model", "kind"],
            registry=None,
        )
        self.ttft = Histogram(
            "mlx_manager_ttft_seconds",
            "Time to first token of inference requests, by model",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=None,
        )
        self.gauges = _Gauges(self)
        self.download_bytes = 0
        self._lock = threading.Lock()
        self._models: set[str] = set()
        self._hooks: list[tuple[list, Callable]] = []

    @property
    def collectors(self) -> list[Any]:
        return [self.requests, self.tokens, self.ttft, self.gauges]

    # -- feeding --------------------------------------------------------------------------------
    def on_audit(self, record: dict[str, Any]) -> None:
        """An `AuditLog` listener: counts inference records (the ones with an endpoint)."""
        try:
            endpoint = record.get("endpoint")
            if not endpoint:
                return
            model = self._model_label(record.get("model"), record.get("status") == "ok")
            tokens = [(kind, _number(record.get(field))) for kind, field in TOKEN_KINDS]
            ttft_ms = _number(record.get("ttft_ms"))
            self.requests.labels(model, _endpoint_label(endpoint), str(record.get("status") or "ok")).inc()
            for kind, count in tokens:
                if count and count > 0:
                    self.tokens.labels(model, kind).inc(count)
            if ttft_ms is not None and ttft_ms >= 0:
                self.ttft.labels(model).observe(ttft_ms / 1000)
        except Exception:  # a listener must not raise into the audit path
            log.exception("metrics: could not count an audit record")

    def on_download_bytes(self, count: int) -> None:
        """A download manager hook: `count` bytes newly transferred."""
        if count > 0:
            with self._lock:
                self.download_bytes += int(count)

    def _model_label(self, model: Any, ok: bool) -> str:
        if not isinstance(model, str) or not model:
            return OTHER
        if model in self._models:
            return model
        app = self.app
        known = ok
        if not known and app is not None:
            with contextlib.suppress(Exception):
                known = app.pool.get_loaded_model(model) is not None
        if not known or len(self._models) >= MAX_MODEL_LABELS:
            return OTHER
        self._models.add(model)
        return model

    # -- life cycle -----------------------------------------------------------------------------
    def attach(self) -> None:
        if self.registry is not None:
            registered = []
            try:
                for collector in self.collectors:
                    self.registry.register(collector)
                    registered.append(collector)
            except ValueError:  # names taken (metrics of a lost app): give way to this one
                for collector in registered:
                    self.registry.unregister(collector)
                _drop_names(self.registry)
                for collector in self.collectors:
                    self.registry.register(collector)
        app = self.app
        if app is None:
            return
        self._hook(getattr(getattr(app, "audit", None), "listeners", None), self.on_audit)
        self._hook(getattr(getattr(app, "downloads", None), "byte_listeners", None), self.on_download_bytes)

    def _hook(self, listeners: list | None, callback: Callable) -> None:
        if isinstance(listeners, list) and callback not in listeners:
            listeners.append(callback)
            self._hooks.append((listeners, callback))

    def detach(self) -> None:
        for listeners, callback in self._hooks:
            with contextlib.suppress(ValueError):
                listeners.remove(callback)
        self._hooks.clear()
        if self.registry is not None:
            for collector in self.collectors:
                with contextlib.suppress(KeyError):
                    self.registry.unregister(collector)
        self.app = None


def _drop_names(registry: CollectorRegistry) -> None:
    """Unregister whatever collectors hold our metric names (left by a reloaded module)."""
    names = getattr(registry, "_names_to_collectors", {})
    found = {id(c): c for name, c in list(names.items()) if name.startswith("mlx_manager_")}
    for collector in found.values():
        with contextlib.suppress(KeyError):
            registry.unregister(collector)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _endpoint_label(path: str) -> str:
    """The route without the server's base URL: `/mlx/v1/chat/completions`."""
    head, sep, tail = str(path).partition("/mlx/")
    return (sep + tail) if sep else str(path)[:256]


_current: Metrics | None = None
_install_lock = threading.Lock()


def install(app: Any) -> Metrics:
    """Register the metrics of `app` (an `MLXManager`) in the default registry; idempotent.
    Installing for another app replaces the metrics of the previous one."""
    global _current
    with _install_lock:
        if _current is not None:
            if _current.app is app:
                return _current
            _current.detach()
        _current = Metrics(app)
        _current.attach()
        return _current


def uninstall(app: Any = None) -> None:
    """Remove the metrics (of `app` only, when given: a stale app cannot remove the current one's)."""
    global _current
    with _install_lock:
        if _current is None or (app is not None and _current.app is not app):
            return
        _current.detach()
        _current = None


def current() -> Metrics | None:
    return _current
