-- The router's catalogue: providers, their upstream keys, the public models and
-- which providers serve them. Health (breakers, 429 cooldowns) lives in memory.

CREATE TABLE providers (
  id          BIGSERIAL PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  type        TEXT NOT NULL CHECK (type IN ('openai', 'azure-openai', 'openai-compatible')),
  base_url    TEXT NOT NULL,
  api_version TEXT NOT NULL DEFAULT '',
  enabled     BOOLEAN NOT NULL DEFAULT TRUE,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The secret is AES-256-GCM ciphertext (with its 16-byte tag appended) under
-- router.master_key; the plaintext is never stored. key_prefix is the few
-- leading characters an operator needs to recognise the key.
CREATE TABLE upstream_keys (
  id                BIGSERIAL PRIMARY KEY,
  provider_id       BIGINT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
  name              TEXT NOT NULL,
  secret_ciphertext BYTEA NOT NULL,
  secret_nonce      BYTEA NOT NULL CHECK (octet_length(secret_nonce) = 12),
  key_prefix        TEXT NOT NULL,
  weight            INTEGER NOT NULL DEFAULT 1 CHECK (weight > 0),
  enabled           BOOLEAN NOT NULL DEFAULT TRUE,
  created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
  UNIQUE (provider_id, name)
);

CREATE TABLE models (
  name       TEXT PRIMARY KEY,
  owned_by   TEXT NOT NULL DEFAULT 'system',
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_aliases (
  alias TEXT PRIMARY KEY,
  model TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE
);

CREATE INDEX model_aliases_model ON model_aliases (model);

CREATE TABLE model_routes (
  model          TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
  provider_id    BIGINT NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
  upstream_model TEXT NOT NULL,
  PRIMARY KEY (model, provider_id)
);

CREATE INDEX model_routes_provider ON model_routes (provider_id);
