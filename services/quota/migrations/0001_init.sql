-- The quota service's durable state. Sliding rate windows and live reservations
-- are memory only; what must survive a restart is here.

-- Overrides of the configured defaults; NULL: the default applies, 0: unlimited.
CREATE TABLE policies (
  subject_kind   TEXT NOT NULL CHECK (subject_kind IN ('key', 'user', 'ip')),
  subject        TEXT NOT NULL,
  rpm            BIGINT CHECK (rpm >= 0),
  tpm            BIGINT CHECK (tpm >= 0),
  monthly_tokens BIGINT CHECK (monthly_tokens >= 0),
  daily_tokens   BIGINT CHECK (daily_tokens >= 0),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (subject_kind, subject)
);

-- Settled tokens per subject and calendar period (UTC): '2026-11' or '2026-11-22'.
CREATE TABLE usage (
  subject_kind TEXT NOT NULL CHECK (subject_kind IN ('key', 'user')),
  subject      TEXT NOT NULL,
  period_kind  TEXT NOT NULL CHECK (period_kind IN ('month', 'day')),
  period       TEXT NOT NULL,
  tokens       BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (subject_kind, subject, period_kind, period)
);

-- Requests already settled: Settle is idempotent on request_id. Pruned after a
-- retention far longer than any edge retries.
CREATE TABLE settled_requests (
  request_id TEXT PRIMARY KEY,
  settled_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settled_requests_settled_at ON settled_requests (settled_at);
