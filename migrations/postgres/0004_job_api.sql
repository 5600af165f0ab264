-- PostgreSQL version of migrations/sqlite/0004_job_api.sql (BIGINT integers).
-- The job API platforms build on (see docs/api.md).
--
-- Idempotent CreateJob (AIP-155): a tenant's request id names at most one job; the request's
-- fingerprint (sha256 of what was asked: spec, labels, priority) tells a retry from a different
-- request reusing the id. NULLs are distinct in a unique index on both backends, so jobs
-- created without a request id never collide.
ALTER TABLE jobs ADD COLUMN request_id TEXT;
ALTER TABLE jobs ADD COLUMN request_hash TEXT;
CREATE UNIQUE INDEX jobs_tenant_request ON jobs (tenant, request_id);

-- Fair scheduling: within a tenant, higher priority starts first.
ALTER TABLE jobs ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;

-- Labels (AIP-160 filters): as given, on the row for reading; one row per label for filtering.
ALTER TABLE jobs ADD COLUMN labels_json TEXT NOT NULL DEFAULT '{}';
CREATE TABLE job_labels (
    job_id  TEXT NOT NULL REFERENCES jobs (id),
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE INDEX job_labels_key_value ON job_labels (key, value);

-- The workers' log lines (stderr), per attempt, for StreamJobLogs on any node.
CREATE TABLE job_logs (
    job_id   TEXT NOT NULL REFERENCES jobs (id),
    attempt  BIGINT NOT NULL,
    line_no  BIGINT NOT NULL,
    unix_ms  BIGINT NOT NULL,
    line     TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt, line_no)
);
