"""Model ids: what a request may name, parsed once into where the model lives.

- `local/<folder>`: a model of the model folders (`c.MLXManager.model_dirs`);
- `adapter/<name>`: a fine-tuned adapter (jobs/) served as its base model plus the adapter;
- `org/name`: a Hugging Face Hub model in the HF cache;
- `remote/<backend>/<upstream id>`: a model of a remote backend (backends/remote.py).

Ids are validated strictly before they touch the file system: ASCII only, exactly one slash
(remote ids excepted), no `..`, no absolute paths, and (for Hub ids, as huggingface_hub itself
insists) no `--`, so that every Hub id names exactly one cache folder `models--org--name`.
Ids are case-insensitive, as on the Hub: `model_key(id)` is what everything compares.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import BadRequest

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
MODEL_ID_RE = re.compile(rf"{_PART}/{_PART}")
LOCAL_PREFIX = "local/"
ADAPTER_PREFIX = "adapter/"
# The upstream id of a remote model is never a file here, so it may hold slashes (vLLM's
# `org/name`, the model path `mlx_lm.server` lists).
REMOTE_ID_RE = re.compile(rf"remote/{_PART}/[A-Za-z0-9._:@+/-]{{1,200}}", re.IGNORECASE)


class ModelId(NamedTuple):
    """A valid model id and where it points: `source` is "folder", "adapter", "hub" or
    "remote"; `name` the part after the prefix (the whole id for the Hub)."""

    text: str
    source: str
    name: str


def parse_model_id(model_id: object) -> ModelId:
    """The parsed id, else 400 `invalid_model_id`."""
    if is_remote_id(model_id):
        return ModelId(model_id, "remote", model_id[len("remote/") :])
    if not is_valid_model_id(model_id):
        raise _invalid()
    if is_local_id(model_id):
        return ModelId(model_id, "folder", model_id[len(LOCAL_PREFIX) :])
    if is_adapter_id(model_id):
        return ModelId(model_id, "adapter", model_id[len(ADAPTER_PREFIX) :])
    return ModelId(model_id, "hub", model_id)


def validate_model_id(model_id: object) -> str:
    """A model id that may name files here (not a remote one), else 400."""
    if is_remote_id(model_id) or not is_valid_model_id(model_id):
        raise _invalid()
    return model_id


def _invalid() -> BadRequest:
    return BadRequest(
        "model ids look like 'org/name' (ASCII letters, digits, '.', '_', '-'; no '--' or '..'; "
        "models from the model folders are 'local/<folder name>')",
        reason="invalid_model_id",
    )


def is_local_id(model_id: str) -> bool:
    """`local/<folder>` (any case): a model of the model folders, never a Hub repo."""
    return model_id[: len(LOCAL_PREFIX)].lower() == LOCAL_PREFIX


def is_adapter_id(model_id: str) -> bool:
    return model_id[: len(ADAPTER_PREFIX)].lower() == ADAPTER_PREFIX


def is_remote_id(model_id: object) -> bool:
    return isinstance(model_id, str) and bool(REMOTE_ID_RE.fullmatch(model_id)) and ".." not in model_id


def is_valid_model_id(model_id: object) -> bool:
    """Any model id a request may name: local (`org/name`, `local/<folder>`) or remote."""
    return is_remote_id(model_id) or (
        isinstance(model_id, str)
        and model_id.isascii()
        and bool(MODEL_ID_RE.fullmatch(model_id))
        and ".." not in model_id
        # A Hub id with `--` would share its cache folder with another id (a--b/c, a/b--c).
        and ("--" not in model_id or is_local_id(model_id))
    )


def is_draft_id(model_id: object) -> bool:
    """A model id a draft model may have: a model on this machine (local or from the Hub cache),
    never a remote one (a draft runs in the model's own runner)."""
    return is_valid_model_id(model_id) and not is_remote_id(model_id)


def model_key(model_id: str) -> str:
    """What identifies a model wherever ids are compared: ids that differ only in case name
    the same model (and, `--` being refused in Hub ids, the same HF cache folder)."""
    return model_id.lower()
