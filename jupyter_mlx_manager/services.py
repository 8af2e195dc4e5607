"""The services handlers use, handed to every route explicitly (`Services`): a handler reads
`self.services.<name>`, never the extension app and its configuration. The app builds them in
`initialize_settings`; tests may build handlers over their own.

Under `pool_url` (a shared model service runs the models) only `users`, `audit`, `in_flight`
and `shared_service` exist here; the routes that would use the others are forwarded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit import AuditLog
    from .auth import UserService
    from .backends import Backends, RemoteBackends
    from .batches import BatchService, FileStore
    from .budgets import Budgets
    from .downloads import DownloadManager
    from .handlers.proxy import SharedService
    from .inference import InferenceService, RequestLimits
    from .inference.audio import AudioService
    from .inference.embeddings import EmbeddingService
    from .inference.stored import ResponseStore
    from .jobs import JobService
    from .models.catalog import ModelCatalog
    from .models.hub import HubSearch
    from .pool import ModelPool
    from .profiles import Profiles


class InFlight:
    """The requests answering now and the open WebSockets: server shutdown ends them first."""

    def __init__(self) -> None:
        self.requests: set[Any] = set()
        self.sockets: set[Any] = set()

    def track_request(self, handler: Any) -> None:
        self.requests.add(handler)

    def untrack_request(self, handler: Any) -> None:
        self.requests.discard(handler)

    def track_socket(self, socket: Any) -> None:
        self.sockets.add(socket)

    def untrack_socket(self, socket: Any) -> None:
        self.sockets.discard(socket)


@dataclass
class Services:
    users: UserService
    audit: AuditLog
    system_status: Callable[[], Awaitable[dict[str, Any]]]
    # The request-size rules handlers apply before a service sees a request.
    max_tokens_limit: int
    max_body_mb: float
    max_image_mb_in_flight: float
    owner_username: str
    in_flight: InFlight = field(default_factory=InFlight)
    shared_service: SharedService | None = None
    catalog: ModelCatalog | None = None
    pool: ModelPool | None = None
    downloads: DownloadManager | None = None
    hub_search: HubSearch | None = None
    limits: RequestLimits | None = None
    remote: RemoteBackends | None = None
    backends: Backends | None = None
    profiles: Profiles | None = None
    budgets: Budgets | None = None
    completions: InferenceService | None = None
    embeddings: EmbeddingService | None = None
    audio: AudioService | None = None
    responses: ResponseStore | None = None
    files: FileStore | None = None
    batches: BatchService | None = None
    jobs: JobService | None = None
