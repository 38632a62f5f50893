-- The auth service's identities: users and their API keys. A key is stored only
-- as its SHA-256 plus a short display prefix; the key itself is shown once at
-- creation and kept nowhere.

CREATE TABLE users (
  id         BIGSERIAL PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
  metadata   JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- version increases with every change of the key or of its user (a user's
-- status is part of each of its keys' principal), so caches holding two views
-- of a key keep the newer. updated_at drives the incremental cache refresh;
-- last_used_at is written in batches and is deliberately not a change.
CREATE TABLE api_keys (
  id             BIGSERIAL PRIMARY KEY,
  user_id        BIGINT NOT NULL REFERENCES users (id),
  name           TEXT NOT NULL DEFAULT '',
  key_hash       BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
  display_prefix TEXT NOT NULL,
  status         TEXT NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'disabled', 'revoked')),
  expires_at     TIMESTAMPTZ,
  allowed_models TEXT[] NOT NULL DEFAULT '{}',
  allowed_cidrs  CIDR[] NOT NULL DEFAULT '{}',
  limits_ref     TEXT NOT NULL DEFAULT '',
  last_used_at   TIMESTAMPTZ,
  version        BIGINT NOT NULL DEFAULT 1,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  revoked_at     TIMESTAMPTZ
);

CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_updated ON api_keys (updated_at);

-- A JSON array of strings as TEXT[], order kept: libpqxx 6 has no array
-- parameters, so lists travel as JSON text.
CREATE FUNCTION tg_text_array(items JSONB) RETURNS TEXT[]
LANGUAGE SQL IMMUTABLE STRICT AS $$
  SELECT COALESCE(array_agg(e ORDER BY i), '{}')
  FROM jsonb_array_elements_text(items) WITH ORDINALITY AS t(e, i)
$$;
