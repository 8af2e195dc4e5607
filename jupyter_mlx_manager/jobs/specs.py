"""What a job may ask, checked before anything starts: the body of `POST mlx/api/jobs` becomes
the spec its worker runs (models resolved to folders, data to a file this user may read)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BadRequest
from ..models.catalog import ModelCatalog
from ..models.ids import ADAPTER_PREFIX, LOCAL_PREFIX, is_valid_model_id
from ..models.inspection import adapter_base, read_json, weights_bytes
from ..models.kinds import model_kind

TYPES = ("finetune", "evaluate", "convert")
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?")
METHODS = ("lora", "dora", "full")
METRICS = ("perplexity", "accuracy")
MAX_DATA_BYTES = 200 * 1024 * 1024
JOB_OVERHEAD_BYTES = 300 * 1024**2  # interpreter, MLX, activations beyond the estimate below
# Memory of a job as a multiple of the weights it works on (optimizer state for a full fine-tune).
MEMORY_FACTOR = {"lora": 1.5, "dora": 1.6, "full": 4.0, "evaluate": 1.2, "convert": 2.5}


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, whole: bool = True) -> Any:
    value = body.get(name, default)
    kind = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise BadRequest(
            f"{name} must be a {'whole ' if whole else ''}number from {low} to {high}", reason="invalid_job"
        )
    return value


def _name(body: dict[str, Any], taken: Callable[[str], bool]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise BadRequest("name must be 1-64 ASCII letters, digits, '.', '_' or '-'", reason="invalid_job")
    if taken(name):
        raise BadRequest(f"there is a model named {name} already: choose another name", reason="name_taken")
    return name


class JobSpecs:
    """Turns request bodies into worker specs (blocking: file-system checks; run off the loop)."""

    def __init__(self, catalog: ModelCatalog, data_dir: Path, root_dir: Path | None, file_path: Callable):
        self.catalog = catalog
        self.data_dir = data_dir
        self.root_dir = root_dir  # the Jupyter root: where a user's `data` paths are
        self.file_path = file_path  # (user, file id) → the path of one of their uploaded files

    def build(self, user: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """(spec, memory estimate in bytes) of a job body, or a 400 naming what is wrong."""
        if not isinstance(body, dict) or body.get("type") not in TYPES:
            raise BadRequest(f"type must be one of {', '.join(TYPES)}", reason="invalid_job")
        return getattr(self, f"_{body['type']}")(user, body)

    def _model(self, model_id: Any, field: str = "model", text_only: bool = True) -> tuple[str, Path]:
        if not isinstance(model_id, str) or not is_valid_model_id(model_id):
            raise BadRequest(f"{field} must be a local model id", reason="invalid_job")
        found = self.catalog.locate(model_id)
        if found is None:
            raise BadRequest(f"{field}: {model_id} is not on this machine", reason="model_not_found")
        if text_only and model_kind(found[1]) != "text":
            raise BadRequest(f"{field}: {model_id} is not a text model", reason="model_kind_not_supported")
        return found

    def _data(self, user: str, value: Any) -> Path:
        """An uploaded file of the user's (`file-…`) or a path under the Jupyter root."""
        if isinstance(value, str) and value.startswith("file-"):
            return self.file_path(user, value)
        if not isinstance(value, str) or not value or value.startswith(("/", "~")) or "\0" in value:
            raise BadRequest(
                "data must be a file id (file-…) or a path relative to your Jupyter root", reason="invalid_data"
            )
        if self.root_dir is None:
            raise BadRequest("this server has no Jupyter root: upload the data to mlx/v1/files", reason="invalid_data")
        root = self.root_dir.resolve()
        path = (root / value).resolve()
        if root not in path.parents or not path.is_file():
            raise BadRequest(f"data: no file {value} under your Jupyter root", reason="invalid_data")
        if path.stat().st_size > MAX_DATA_BYTES:
            raise BadRequest(f"data is larger than {MAX_DATA_BYTES // 2**20} MB", reason="invalid_data")
        return path

    def _taken(self, name: str) -> bool:
        return any(self.catalog.locate(prefix + name) is not None for prefix in (LOCAL_PREFIX, ADAPTER_PREFIX))

    def _finetune(self, user: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        model_id, path = self._model(body.get("model"))
        if adapter_base(path):
            raise BadRequest("model: fine-tune a model, not an adapter", reason="invalid_job")
        method = body.get("method", "lora")
        if method not in METHODS:
            raise BadRequest(f"method must be one of {', '.join(METHODS)}", reason="invalid_job")
        layers = int(read_json(path / "config.json").get("num_hidden_layers") or 1)
        iters = _number(body, "iters", 100, 1, 100_000)
        spec = {
            "type": "finetune",
            "model": model_id,
            "model_path": str(path),
            "data_path": str(self._data(user, body.get("data"))),
            "name": _name(body, self._taken),
            "method": method,
            "iters": iters,
            "batch_size": _number(body, "batch_size", 4, 1, 256),
            "learning_rate": _number(body, "learning_rate", 1e-5, 1e-9, 1.0, whole=False),
            "lora_rank": _number(body, "lora_rank", 8, 1, 1024),
            "num_layers": _number(body, "num_layers", min(16, layers), 1, layers),
            "max_seq_length": _number(body, "max_seq_length", 2048, 16, 1_048_576),
            "val_fraction": _number(body, "val_fraction", 0.1, 0.0, 0.5, whole=False),
            "seed": _number(body, "seed", 0, 0, 2**31 - 1),
            "save_every": _number(body, "save_every", 100, 1, 100_000),
            "report_every": max(1, iters // 50),
            "eval_every": max(1, iters // 10),
        }
        spec["output_path"] = str(self.data_dir / "adapters" / f"{spec['name']}.partial")
        return spec, int(weights_bytes(path) * MEMORY_FACTOR[method]) + JOB_OVERHEAD_BYTES

    def _evaluate(self, user: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        ids = body.get("models") if "models" in body else [body.get("model")]
        if not isinstance(ids, list) or not 1 <= len(ids) <= 8:
            raise BadRequest("models must be a list of 1 to 8 local model ids", reason="invalid_job")
        models = []
        for model_id in ids:
            canonical, path = self._model(model_id, "models")
            base = adapter_base(path)
            models.append(
                {"id": canonical, "path": base["base_path"] if base else str(path),
                 "adapter_path": str(path) if base else None}
            )  # fmt: skip
        metrics = body.get("metrics", list(METRICS))
        if not isinstance(metrics, list) or not metrics or not set(metrics) <= set(METRICS):
            raise BadRequest(f"metrics must be a list from {', '.join(METRICS)}", reason="invalid_job")
        spec = {
            "type": "evaluate",
            "models": models,
            "data_path": str(self._data(user, body.get("data"))),
            "metrics": metrics,
            "limit": _number(body, "limit", 0, 0, 1_000_000),
            "max_seq_length": _number(body, "max_seq_length", 2048, 16, 1_048_576),
        }
        largest = max(weights_bytes(Path(m["adapter_path"] or m["path"])) for m in models)
        return spec, int(largest * MEMORY_FACTOR["evaluate"]) + JOB_OVERHEAD_BYTES

    def _convert(self, user: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        source_id, path = self._model(body.get("source"), "source")
        if adapter_base(path):
            raise BadRequest("source: convert a model, not an adapter", reason="invalid_job")
        name = _name(body, self._taken)
        quantize = body.get("quantize")
        if quantize is not None:
            if not isinstance(quantize, dict) or quantize.get("bits") not in (2, 3, 4, 6, 8):
                raise BadRequest("quantize.bits must be 2, 3, 4, 6 or 8", reason="invalid_job")
            group = quantize.get("group_size", 64)
            if group not in (32, 64, 128):
                raise BadRequest("quantize.group_size must be 32, 64 or 128", reason="invalid_job")
            quantize = {"bits": quantize["bits"], "group_size": group}
        dtype = body.get("dtype")
        if dtype not in (None, "float16", "bfloat16", "float32"):
            raise BadRequest("dtype must be float16, bfloat16 or float32", reason="invalid_job")
        spec = {
            "type": "convert",
            "source": source_id,
            "source_path": str(path),
            "model_id": LOCAL_PREFIX + name,
            "output_path": str(self.data_dir / "models" / name),
            "quantize": quantize,
            "dtype": dtype,
        }
        return spec, int(weights_bytes(path) * MEMORY_FACTOR["convert"]) + JOB_OVERHEAD_BYTES
