-- Opt-in per key: the edge keeps the request and response bodies of this key's
-- requests (secrets redacted) with their usage records in billing. Off by default.
ALTER TABLE api_keys ADD COLUMN store_bodies BOOLEAN NOT NULL DEFAULT false;
