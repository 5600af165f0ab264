-- The job service's state, PostgreSQL version of migrations/sqlite/0001_init.sql: the same
-- tables, columns, keys and indexes, version for version (see migrations/README.md).
--
-- What PostgreSQL needs that SQLite does not:
-- * BIGINT for every integer column. SQLite's INTEGER is already 64-bit, and the service reads
--   every integer column as i64; a typed PostgreSQL driver refuses to decode INTEGER (int4)
--   into i64, so `attempts`, `max_attempts`, `threads` and `attempts.attempt` are BIGINT here
--   although they are INTEGER in the SQLite file (whose text cannot change: sqlx checksums it).
-- * Nothing else: TEXT, DOUBLE PRECISION, composite primary keys, REFERENCES and
--   application-generated keys are the same on both. Times are unix milliseconds, paths are
--   relative to the data directory.

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,           -- job-<16 hex>, sortable by creation time
    name          TEXT NOT NULL,
    state         TEXT NOT NULL,              -- QUEUED | RUNNING | SUCCEEDED | FAILED | CANCELLED
    spec_json     TEXT NOT NULL,              -- prune_core::JobSpec as accepted
    warnings_json TEXT NOT NULL,              -- JSON array of strings
    error         TEXT,                       -- one line, FAILED jobs
    attempts      BIGINT NOT NULL,            -- worker processes started so far
    max_attempts  BIGINT NOT NULL,
    threads       BIGINT NOT NULL,            -- libtorch threads: fixed at creation so a resume computes alike
    step          BIGINT NOT NULL,
    total_steps   BIGINT NOT NULL,
    epoch         BIGINT NOT NULL,
    loss          DOUBLE PRECISION,
    accuracy      DOUBLE PRECISION,
    sparsity_json TEXT,                       -- latest per-tensor sparsity, JSON
    report_json   TEXT,                       -- prune_engine::Report of a SUCCEEDED job
    created_ms    BIGINT NOT NULL,
    started_ms    BIGINT,
    finished_ms   BIGINT
);
CREATE INDEX jobs_state_id ON jobs (state, id);

-- One row per worker process started for a job.
CREATE TABLE attempts (
    job_id          TEXT NOT NULL REFERENCES jobs (id),
    attempt         BIGINT NOT NULL,          -- 1, 2, ...
    resumed_step    BIGINT,                   -- the checkpoint's step it resumed from; NULL: from scratch
    started_ms      BIGINT NOT NULL,
    finished_ms     BIGINT,
    outcome         TEXT,                     -- NULL while running; succeeded | failed | crashed | interrupted | cancelled
    error           TEXT,
    PRIMARY KEY (job_id, attempt)
);

-- Checkpoints the engine wrote (temp file, fsync, rename) and reported.
CREATE TABLE checkpoints (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    step        BIGINT NOT NULL,
    epoch       BIGINT NOT NULL,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (job_id, step)
);

-- Time series. A resumed attempt re-reports the steps after its checkpoint: the key makes
-- that an overwrite (with the same values, as training is deterministic).
CREATE TABLE metrics (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    name    TEXT NOT NULL,
    step    BIGINT NOT NULL,
    value   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, name, step)
);

-- Content-addressed uploads.
CREATE TABLE blobs (
    id          TEXT PRIMARY KEY,             -- sha256:<hex>
    size        BIGINT NOT NULL,
    path        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- Exported files of SUCCEEDED jobs.
CREATE TABLE artifacts (
    job_id          TEXT NOT NULL REFERENCES jobs (id),
    format          TEXT NOT NULL,            -- safetensors | torchscript
    path            TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    compression     TEXT NOT NULL,            -- none | gzip | zstd
    sparse_format   TEXT NOT NULL,            -- dense | bitmask
    PRIMARY KEY (job_id, format)
);
