"""Prometheus metrics in Jupyter's own /metrics, after real requests through real runners."""

from __future__ import annotations

import pytest
from conftest import server_config
from models import build_models, eos_id
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_mlx_manager import metrics

MODEL = "local/tiny-demo"
ENDPOINT = "/mlx/v1/chat/completions"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("metrics-models"), ["tiny-demo"])


@pytest.fixture
def mlx_config(models_dir):
    return server_config(models_dir, default_keep_alive=-1)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(jp_fetch) -> dict[tuple[str, tuple], float]:
    response = await jp_fetch("metrics")  # authenticated: Jupyter's token, as a Prometheus job would send
    assert response.code == 200
    return samples(response.body.decode())


async def test_metrics_count_requests_tokens_ttft_and_show_the_pool(api, jp_fetch, mlx_app, models_dir):
    installed = metrics.install(mlx_app)  # app.py installs it at start; installing again is a no-op
    assert metrics.install(mlx_app) is installed and installed.on_audit in mlx_app.audit.listeners
    no_eos = {str(eos_id(models_dir / "tiny-demo")): -100}

    before = await scrape(jp_fetch)
    assert before[("mlx_manager_loaded_models", ())] == 0
    assert before[("mlx_manager_download_bytes_total", ())] == 0

    usages = []
    for text in ("Hello", "Hello again, how are you?"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 5, "logit_bias": no_eos}
        reply = await api("POST", "mlx/v1/chat/completions", body=body)
        assert reply.code == 200, reply.body
        usages.append(reply.body["usage"])
    # A request for a model that does not exist: counted, but under one bounded label.
    body = {"model": "local/no-such-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert (await api("POST", "mlx/v1/chat/completions", body=body)).code == 404

    after = await scrape(jp_fetch)
    assert after[("mlx_manager_requests_total", (("endpoint", ENDPOINT), ("model", MODEL), ("status", "ok")))] == 2
    other = ("mlx_manager_requests_total", (("endpoint", ENDPOINT), ("model", metrics.OTHER), ("status", "error")))
    assert after[other] == 1
    assert not any("no-such-model" in str(labels) for _, labels in after)

    def tokens(kind):
        return after.get(("mlx_manager_tokens_total", (("kind", kind), ("model", MODEL))), 0)

    assert tokens("prompt") == sum(u["prompt_tokens"] for u in usages) > 0
    assert tokens("completion") == sum(u["completion_tokens"] for u in usages) == 10
    assert tokens("cached") == sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)

    assert after[("mlx_manager_ttft_seconds_count", (("model", MODEL),))] == 2
    assert after[("mlx_manager_ttft_seconds_sum", (("model", MODEL),))] > 0
    assert after[("mlx_manager_ttft_seconds_bucket", (("le", "+Inf"), ("model", MODEL)))] == 2
    assert after[("mlx_manager_loaded_models", ())] == 1
    assert after[("mlx_manager_model_memory_bytes", (("model", MODEL),))] > 0
    assert after[("mlx_manager_queue_depth", (("model", MODEL),))] == 0

    # Jupyter's own metrics are still there: one registry, one endpoint.
    assert any(name.startswith("jupyter_") or name.startswith("http_") for name, _ in after)


async def test_metrics_need_jupyters_authentication(api):
    reply = await api("GET", "metrics", auth=None)
    assert reply.code == 403


class _Listeners:
    def __init__(self):
        self.listeners = []
        self.byte_listeners = []


class _Pool:
    def __init__(self, loaded=()):
        self.loaded = list(loaded)

    def loaded_models(self):
        return self.loaded

    def get_loaded_model(self, model_id):
        return next((m for m in self.loaded if m.model_id == model_id), None)


class _Model:
    def __init__(self, model_id, memory_bytes):
        self.model_id, self.memory_bytes = model_id, memory_bytes


class _Limits:
    def __init__(self, depths):
        self._models = dict(depths)

    def queue_depth(self, model_id):
        return self._models.get(model_id, 0)

    def models(self):
        return list(self._models)


class _App:
    def __init__(self, loaded=(), depths=()):
        self.audit = _Listeners()
        self.downloads = _Listeners()
        self.pool = _Pool(loaded)
        self.limits = _Limits(depths)


def test_a_second_app_replaces_the_first_and_uninstall_removes_everything():
    first, second = _App(), _App()
    try:
        a = metrics.install(first)
        b = metrics.install(second)  # a new server in the same process: no duplicate registration
        assert a is not b and metrics.current() is b
        assert first.audit.listeners == [] and first.downloads.byte_listeners == []
        assert second.audit.listeners == [b.on_audit] and second.downloads.byte_listeners == [b.on_download_bytes]
        metrics.uninstall(first)  # a stale app's stop does not remove the current one's metrics
        assert metrics.current() is b
    finally:
        metrics.uninstall(second)
    assert metrics.current() is None and second.audit.listeners == []
    text = generate_latest().decode()
    assert "mlx_manager_" not in text


def test_gauges_downloads_and_bounded_model_labels_on_a_private_registry(monkeypatch):
    registry = CollectorRegistry()
    app = _App(loaded=[_Model("org/a", 1234)], depths={"org/a": 0, "org/b": 3})
    m = metrics.Metrics(app, registry=registry)
    m.attach()
    m.on_download_bytes(1000)
    m.on_download_bytes(24)
    m.on_audit({"action": "auth.login", "status": "ok"})  # not an inference record: ignored
    m.on_audit({"endpoint": "/user/x/mlx/v1/completions", "model": "org/a", "status": "ok", "prompt_tokens": 3,
                "completion_tokens": 4, "cached_tokens": 0, "ttft_ms": 12.5})  # fmt: skip
    m.on_audit({"endpoint": ENDPOINT, "model": "org/a", "status": "error", "prompt_tokens": None})
    m.on_audit({"endpoint": ENDPOINT, "model": "never/served", "status": "error"})
    m.on_audit({"endpoint": ENDPOINT, "model": object(), "status": "ok", "ttft_ms": "garbage"})  # never raises
    monkeypatch.setattr(metrics, "MAX_MODEL_LABELS", 1)
    m.on_audit({"endpoint": ENDPOINT, "model": "org/c", "status": "ok"})  # over the label budget

    got = samples(generate_latest(registry).decode())
    assert got[("mlx_manager_download_bytes_total", ())] == 1024
    assert got[("mlx_manager_loaded_models", ())] == 1
    assert got[("mlx_manager_model_memory_bytes", (("model", "org/a"),))] == 1234
    assert got[("mlx_manager_queue_depth", (("model", "org/b"),))] == 3  # waiting while it loads
    completions = ("endpoint", "/mlx/v1/completions")
    assert got[("mlx_manager_requests_total", (completions, ("model", "org/a"), ("status", "ok")))] == 1
    assert got[("mlx_manager_requests_total", (("endpoint", ENDPOINT), ("model", "org/a"), ("status", "error")))] == 1
    assert got[("mlx_manager_requests_total", (("endpoint", ENDPOINT), ("model", "(other)"), ("status", "error")))] == 1
    assert (
        got[("mlx_manager_requests_total", (("endpoint", ENDPOINT), ("model", "(other)"), ("status", "ok")))] == 2
    )  # object() and org/c
    assert got[("mlx_manager_tokens_total", (("kind", "completion"), ("model", "org/a")))] == 4
    assert got[("mlx_manager_ttft_seconds_sum", (("model", "org/a"),))] == pytest.approx(0.0125)
    m.detach()
    assert app.audit.listeners == [] and "mlx_manager_" not in generate_latest(registry).decode()
