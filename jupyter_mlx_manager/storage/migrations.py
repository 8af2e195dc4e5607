"""Forward-only schema migrations; `PRAGMA user_version` is the index of the last one applied.

Append new migrations to the list; never edit one that has shipped.
"""

MIGRATIONS: list[str] = [
    # 1: users, API tokens and the audit log.
    """
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT,
        status        TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'disabled')),
        is_admin      INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
        created_at    TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name         TEXT NOT NULL,
        token_hash   TEXT NOT NULL,
        created_at   TEXT NOT NULL,
        expires_at   TEXT NOT NULL
    );
    CREATE INDEX api_tokens_user ON api_tokens(user_id);
    CREATE TABLE audit_log (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id        TEXT,
        time              TEXT NOT NULL,
        user              TEXT,
        client            TEXT,
        action            TEXT NOT NULL,
        endpoint          TEXT,
        model             TEXT,
        status            TEXT NOT NULL,
        prompt_tokens     INTEGER,
        cached_tokens     INTEGER,
        completion_tokens INTEGER,
        ttft_ms           REAL,
        duration_ms       REAL,
        error_type        TEXT,
        detail            TEXT
    );
    CREATE INDEX audit_log_time ON audit_log(time);
    CREATE INDEX audit_log_user_time ON audit_log(user, time);
    CREATE INDEX audit_log_model_time ON audit_log(model, time);
    """,
    # 2: model downloads (downloads/manager.py); unfinished ones resume at startup.
    """
    CREATE TABLE downloads (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        repo_id          TEXT NOT NULL,
        revision         TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('queued', 'downloading', 'completed', 'failed', 'cancelled')),
        downloaded_bytes INTEGER NOT NULL DEFAULT 0,
        total_bytes      INTEGER,
        files_done       INTEGER NOT NULL DEFAULT 0,
        files_total      INTEGER,
        error            TEXT,
        error_kind       TEXT,
        user             TEXT,
        commit_sha       TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        finished_at      TEXT
    );
    CREATE INDEX downloads_status ON downloads(status);
    CREATE INDEX downloads_repo ON downloads(repo_id);
    """,
    # 3: the notebook behind a request (audit/attribution.py): the session's path, its kernel
    # and the running cell, when a kernel of the requesting user's sessions sent them.
    """
    ALTER TABLE audit_log ADD COLUMN notebook TEXT;
    ALTER TABLE audit_log ADD COLUMN kernel_id TEXT;
    ALTER TABLE audit_log ADD COLUMN cell_id TEXT;
    CREATE INDEX audit_log_notebook_time ON audit_log(notebook, time);
    """,
    # Stored OpenAI Responses (protocols/responses.py, inference/stored.py): one row per
    # response, per user, until `expires_at` (c.MLXManager.responses_ttl_hours); `history` is
    # the whole conversation up to and including it, so previous_response_id needs one read.
    """
    CREATE TABLE responses (
        id          TEXT PRIMARY KEY,
        user        TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        expires_at  TEXT NOT NULL,
        body        TEXT NOT NULL,
        history     TEXT NOT NULL
    );
    CREATE INDEX responses_user ON responses(user);
    CREATE INDEX responses_expires ON responses(expires_at);
    """,
    # 5: the backend that served an inference request: `local`, or a remote backend's name
    # (backends/remote.py); older records and non-inference ones have none.
    """
    ALTER TABLE audit_log ADD COLUMN backend TEXT;
    """,
    # 6: token budgets set by admins through `mlx/api/budgets` (budgets.py): one row per
    # scope and name (the default's name is ''), its limits as JSON; config holds the rest.
    # And each user's groups as last seen.
    """
    CREATE TABLE budgets (
        scope       TEXT NOT NULL CHECK (scope IN ('default', 'user', 'group')),
        name        TEXT NOT NULL,
        limits      TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        PRIMARY KEY (scope, name)
    );
    -- The groups the identity provider (JupyterHub) last gave each user: a request with one of
    -- our own tokens carries none, and must not escape its group's budget.
    CREATE TABLE user_groups (
        username    TEXT PRIMARY KEY COLLATE NOCASE,
        groups      TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    """,
    # 7: OpenAI's Files and Batch API (batches/): uploaded files (their bytes live in
    # <data_dir>/files/<id>) and batches, whose output and error files are files too.
    """
    CREATE TABLE files (
        id          TEXT PRIMARY KEY,
        user        TEXT NOT NULL,
        filename    TEXT NOT NULL,
        purpose     TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        lines       INTEGER NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX files_user ON files(user, created_at);
    CREATE TABLE batches (
        id                 TEXT PRIMARY KEY,
        user               TEXT NOT NULL,
        endpoint           TEXT NOT NULL,
        input_file_id      TEXT NOT NULL,
        completion_window  TEXT NOT NULL,
        status             TEXT NOT NULL,
        output_file_id     TEXT,
        error_file_id      TEXT,
        total              INTEGER NOT NULL DEFAULT 0,
        completed          INTEGER NOT NULL DEFAULT 0,
        failed             INTEGER NOT NULL DEFAULT 0,
        metadata           TEXT,
        errors             TEXT,
        created_at         INTEGER NOT NULL,
        in_progress_at     INTEGER,
        finalizing_at      INTEGER,
        completed_at       INTEGER,
        failed_at          INTEGER,
        cancelling_at      INTEGER,
        cancelled_at       INTEGER,
        expires_at         INTEGER NOT NULL
    );
    CREATE INDEX batches_user ON batches(user, created_at);
    CREATE INDEX batches_status ON batches(status);
    """,
    # 8: seconds of audio of a transcription (in) or speech (out) request, so usage shows audio
    # in seconds rather than in samples.
    """
    ALTER TABLE audit_log ADD COLUMN audio_seconds REAL;
    """,
    # 9: workbench jobs (jobs/): fine-tune, evaluate, convert; each its user's, its spec, its last
    # progress and its result as JSON.
    """
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        user         TEXT NOT NULL,
        type         TEXT NOT NULL,
        status       TEXT NOT NULL,
        spec         TEXT NOT NULL,
        progress     TEXT,
        result       TEXT,
        error        TEXT,
        created_at   TEXT NOT NULL,
        started_at   TEXT,
        finished_at  TEXT
    );
    CREATE INDEX jobs_user ON jobs(user, created_at);
    CREATE INDEX jobs_status ON jobs(status);
    """,
    # 10: model profiles set by admins (profiles.py; config holds the rest), and the name a
    # request asked for when a profile or an alias chose the model that answered.
    """
    CREATE TABLE profiles (
        name        TEXT PRIMARY KEY COLLATE NOCASE,
        body        TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    ALTER TABLE audit_log ADD COLUMN requested_model TEXT;
    """,
]
