-- Tracked runs (docs/python.md): a training loop outside the service reports to a job of kind
-- 'tracked' (StartTrackedRun, ReportTrackedRun); its weights come at the end and are exported
-- by a worker like a one-shot job's. Jobs from before kinds existed are 'service' jobs.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'service';
-- The current reporting session (1, 2, ...: each start or re-attach opens one): reports of an
-- older session are refused, as an attempt number fences a worker's writes.
ALTER TABLE jobs ADD COLUMN tracked_session BIGINT NOT NULL DEFAULT 0;
-- Who reports (host:pid, as the client said).
ALTER TABLE jobs ADD COLUMN tracked_client TEXT;
-- When the client last reported, while it reports (RUNNING, no worker); NULL otherwise. A
-- RUNNING job with it set holds no lease and is never claimed; once it is older than the
-- tracked timeout the run FAILS.
ALTER TABLE jobs ADD COLUMN reported_ms BIGINT;
CREATE INDEX jobs_state_reported ON jobs (state, reported_ms);
