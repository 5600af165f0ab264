-- PostgreSQL version of migrations/sqlite/0003_leases.sql (BIGINT for the integer column).
-- Leases: several nodes share one database (PostgreSQL) and take jobs from it. A RUNNING job
-- belongs to the node named in `lease_owner` until `lease_expires_ms`; the owner renews it while
-- its worker runs. A job whose lease expired (node died, partitioned, paused) or was released
-- (0: crash retry, shutdown hand-over) is claimed again by any node, as a new attempt. The
-- attempt number (`jobs.attempts`) is the fencing token: every write of an attempt checks it.

ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_ms BIGINT;
-- The claim looks for QUEUED jobs and RUNNING jobs with an expired lease.
CREATE INDEX jobs_state_lease ON jobs (state, lease_expires_ms);

-- Which node ran each attempt ('' for attempts from before nodes had names).
ALTER TABLE attempts ADD COLUMN node TEXT NOT NULL DEFAULT '';
