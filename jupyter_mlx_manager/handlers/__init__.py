"""HTTP routes. Handlers are thin: they parse the request and call a service."""

from __future__ import annotations

from .anthropic import CountTokensHandler, MessagesHandler
from .audio import SpeechHandler, TranscriptionsHandler
from .audit import AuditExportHandler, AuditHandler, AuditStatsHandler, AuditWebSocketHandler, UsageHandler
from .auth import LoginHandler, MeHandler, RegisterHandler, TicketHandler, TokenHandler, TokensHandler
from .batches import BatchCancelHandler, BatchesHandler, BatchHandler, FileContentHandler, FileHandler, FilesHandler
from .budgets import BudgetsHandler
from .downloads import DownloadHandler, DownloadProgressHandler, DownloadsHandler
from .embeddings import EmbeddingsHandler
from .fallback import UnknownAPIRoute, UnknownOpenAIRoute
from .jobs import JobEventsHandler, JobHandler, JobsHandler
from .models import LocalModelHandler, LocalModelsHandler, ModelSearchHandler
from .openai import ChatCompletionsHandler, CompletionsHandler, ModelsHandler, ProbeHandler
from .pool import PoolHandler, PoolLoadHandler, PoolUnloadHandler
from .profiles import ProfileHandler, ProfilesHandler
from .responses import InputTokensHandler, ResponseHandler, ResponsesHandler
from .status import OpenAPIHandler, StatusHandler
from .users import UserHandler, UsersHandler

_ID = r"(\d{1,18})"
_OPENAI_ID = r"([A-Za-z0-9_-]{1,64})"  # file-…, batch_…

ROUTES = [
    ("mlx/api/status", StatusHandler),
    ("mlx/api/openapi.json", OpenAPIHandler),
    ("mlx/api/auth/register", RegisterHandler),
    ("mlx/api/auth/login", LoginHandler),
    ("mlx/api/auth/me", MeHandler),
    ("mlx/api/auth/tokens", TokensHandler),
    (rf"mlx/api/auth/tokens/{_ID}", TokenHandler),
    ("mlx/api/auth/ticket", TicketHandler),
    ("mlx/api/users", UsersHandler),
    (rf"mlx/api/users/{_ID}", UserHandler),
    ("mlx/api/audit", AuditHandler),
    ("mlx/api/audit/stats", AuditStatsHandler),
    ("mlx/api/audit/export", AuditExportHandler),
    ("mlx/api/audit/ws", AuditWebSocketHandler),
    ("mlx/api/usage", UsageHandler),
    ("mlx/api/profiles", ProfilesHandler),
    (r"mlx/api/profiles/([A-Za-z0-9._:-]{1,64})", ProfileHandler),
    ("mlx/api/budgets", BudgetsHandler),
    ("mlx/api/pool", PoolHandler),
    ("mlx/api/pool/load", PoolLoadHandler),
    ("mlx/api/pool/unload", PoolUnloadHandler),
    ("mlx/api/models/search", ModelSearchHandler),
    ("mlx/api/models/local", LocalModelsHandler),
    (r"mlx/api/models/local/(.+)", LocalModelHandler),
    ("mlx/api/downloads", DownloadsHandler),
    (rf"mlx/api/downloads/{_ID}", DownloadHandler),
    (rf"mlx/api/downloads/{_ID}/progress", DownloadProgressHandler),
    ("mlx/api/jobs", JobsHandler),
    (rf"mlx/api/jobs/{_OPENAI_ID}", JobHandler),
    (rf"mlx/api/jobs/{_OPENAI_ID}/events", JobEventsHandler),
    ("mlx/?", ProbeHandler),
    ("mlx/v1/?", ProbeHandler),
    ("mlx/v1/models", ModelsHandler),
    ("mlx/v1/chat/completions", ChatCompletionsHandler),
    ("mlx/v1/completions", CompletionsHandler),
    ("mlx/v1/embeddings", EmbeddingsHandler),
    ("mlx/v1/audio/transcriptions", TranscriptionsHandler),
    ("mlx/v1/audio/speech", SpeechHandler),
    ("mlx/v1/messages", MessagesHandler),
    ("mlx/v1/messages/count_tokens", CountTokensHandler),
    ("mlx/v1/files", FilesHandler),
    (rf"mlx/v1/files/{_OPENAI_ID}", FileHandler),
    (rf"mlx/v1/files/{_OPENAI_ID}/content", FileContentHandler),
    ("mlx/v1/batches", BatchesHandler),
    (rf"mlx/v1/batches/{_OPENAI_ID}", BatchHandler),
    (rf"mlx/v1/batches/{_OPENAI_ID}/cancel", BatchCancelHandler),
    ("mlx/v1/responses", ResponsesHandler),
    ("mlx/v1/responses/input_tokens", InputTokensHandler),
    (r"mlx/v1/responses/(.+)", ResponseHandler),
    # Last: anything else under our prefixes is a JSON 404, not Jupyter's HTML page.
    ("mlx/api/.*", UnknownAPIRoute),
    ("mlx/v1/.*", UnknownOpenAIRoute),
]
