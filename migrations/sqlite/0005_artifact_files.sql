-- A job's export may be several files of one format (a sharded checkpoint: one packed shard per
-- input shard, an index and compressed-tensors' config.json), so artifacts are keyed by their
-- file rather than by format. The rows of `artifacts` move over unchanged.
CREATE TABLE artifact_files (
    job_id          TEXT NOT NULL REFERENCES jobs (id),
    format          TEXT NOT NULL,            -- safetensors | torchscript
    path            TEXT NOT NULL,            -- store key; its last part is the file name
    sha256          TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    compression     TEXT NOT NULL,            -- none | gzip | zstd
    sparse_format   TEXT NOT NULL,            -- dense | bitmask
    PRIMARY KEY (job_id, path)
);
INSERT INTO artifact_files (job_id, format, path, sha256, bytes, compression, sparse_format)
    SELECT job_id, format, path, sha256, bytes, compression, sparse_format FROM artifacts;
DROP TABLE artifacts;
