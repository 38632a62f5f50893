-- The billing service's ledger. Money is BIGINT micro-units everywhere.
-- balance_micros = top-ups - settled costs, maintained in the same transaction
-- as the ledger rows that change it; live holds are subtracted when deciding.

CREATE TABLE prices (
  id                           BIGSERIAL PRIMARY KEY,
  model                        TEXT NOT NULL,
  provider                     TEXT NOT NULL DEFAULT '',  -- '': any provider
  input_micros_per_mtok        BIGINT NOT NULL CHECK (input_micros_per_mtok >= 0),
  output_micros_per_mtok       BIGINT NOT NULL CHECK (output_micros_per_mtok >= 0),
  cached_input_micros_per_mtok BIGINT NOT NULL CHECK (cached_input_micros_per_mtok >= 0),
  effective_from               TIMESTAMPTZ NOT NULL,
  created_at                   TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (model, provider, effective_from)
);

CREATE TABLE multipliers (
  user_id        BIGINT PRIMARY KEY,
  multiplier_ppm BIGINT NOT NULL CHECK (multiplier_ppm > 0)
);

CREATE TABLE accounts (
  user_id             BIGINT PRIMARY KEY,
  balance_micros      BIGINT NOT NULL DEFAULT 0,
  credit_limit_micros BIGINT NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
  created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE top_ups (
  id            BIGSERIAL PRIMARY KEY,
  user_id       BIGINT NOT NULL REFERENCES accounts (user_id),
  amount_micros BIGINT NOT NULL CHECK (amount_micros > 0),
  note          TEXT NOT NULL DEFAULT '',
  actor         TEXT NOT NULL,
  created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX top_ups_user ON top_ups (user_id);

-- state: live until settled by its record, released, or expired (expires_at
-- passed: it stops counting at once; the state is rewritten lazily).
CREATE TABLE holds (
  id            BIGSERIAL PRIMARY KEY,
  user_id       BIGINT NOT NULL,
  request_id    TEXT NOT NULL,
  amount_micros BIGINT NOT NULL CHECK (amount_micros >= 0),
  state         TEXT NOT NULL DEFAULT 'live'
                CHECK (state IN ('live', 'settled', 'released', 'expired')),
  created_at    TIMESTAMPTZ NOT NULL,
  expires_at    TIMESTAMPTZ NOT NULL
);

CREATE INDEX holds_live ON holds (user_id, expires_at) WHERE state = 'live';

CREATE TABLE usage_records (
  id                  BIGSERIAL PRIMARY KEY,
  request_id          TEXT NOT NULL UNIQUE,
  user_id             BIGINT NOT NULL,
  api_key_id          BIGINT NOT NULL,
  model               TEXT NOT NULL,
  upstream_model      TEXT NOT NULL,
  upstream_key_id     BIGINT NOT NULL,
  provider            TEXT NOT NULL,
  hold_id             BIGINT NOT NULL,
  prompt_tokens       BIGINT NOT NULL,
  completion_tokens   BIGINT NOT NULL,
  cached_tokens       BIGINT NOT NULL,
  cost_micros         BIGINT NOT NULL,
  price_id            BIGINT,  -- NULL: the model had no price (cost 0)
  multiplier_ppm      BIGINT NOT NULL,
  usage_estimated     BOOLEAN NOT NULL,
  streamed            BOOLEAN NOT NULL,
  status              INTEGER NOT NULL,
  latency_ms          BIGINT NOT NULL,
  client_disconnected BOOLEAN NOT NULL,
  attempts            INTEGER NOT NULL,
  client_ip           TEXT NOT NULL,
  started_at          TIMESTAMPTZ NOT NULL,
  finished_at         TIMESTAMPTZ NOT NULL,
  recorded_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX usage_records_user_time ON usage_records (user_id, started_at);

-- Maintained in the transaction that inserts the records it sums.
CREATE TABLE usage_daily (
  day               DATE NOT NULL,
  user_id           BIGINT NOT NULL,
  api_key_id        BIGINT NOT NULL,
  model             TEXT NOT NULL,
  requests          BIGINT NOT NULL,
  prompt_tokens     BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL,
  cached_tokens     BIGINT NOT NULL,
  cost_micros       BIGINT NOT NULL,
  PRIMARY KEY (day, user_id, api_key_id, model)
);

CREATE TABLE audit_log (
  id      BIGSERIAL PRIMARY KEY,
  at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  actor   TEXT NOT NULL,
  action  TEXT NOT NULL,
  target  TEXT NOT NULL,
  details JSONB NOT NULL DEFAULT '{}'
);

-- Append-only for everyone, the table's owner included (a REVOKE would not bind the owner).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
