-- Tenants: every job, and every tenant's claim on a blob, belongs to the tenant named by the
-- bearer token it was created with (`default` when the server runs without --tokens).
-- Rows from before tenants existed belong to `default`.

ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
-- ListJobs pages one tenant's jobs newest first; admission counts its queued jobs.
CREATE INDEX jobs_tenant_state_id ON jobs (tenant, state, id);
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);

-- Blobs are stored once per content, but a tenant sees a blob only after uploading it itself:
-- otherwise HasBlob would tell anyone whether someone else holds a given file.
CREATE TABLE blob_owners (
    blob_id     TEXT NOT NULL REFERENCES blobs (id),
    tenant      TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (blob_id, tenant)
);
INSERT INTO blob_owners (blob_id, tenant, created_ms) SELECT id, 'default', created_ms FROM blobs;
