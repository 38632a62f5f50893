-- Request and response bodies of the keys that opted in (auth's
-- api_keys.store_bodies), secrets redacted by the edge. Kept apart from
-- usage_records so the ledger's rows stay small; written in the transaction
-- that inserts their record, once (a redelivered record changes nothing).
CREATE TABLE usage_bodies (
  request_id       TEXT PRIMARY KEY REFERENCES usage_records (request_id),
  request_body     TEXT NOT NULL,
  response_body    TEXT NOT NULL,
  bodies_truncated BOOLEAN NOT NULL
);

-- ListUsageRecords pages through one key's records, newest first.
CREATE INDEX usage_records_key_time ON usage_records (api_key_id, started_at);
CREATE INDEX usage_records_time ON usage_records (started_at);

-- Live holds moved to memory (HoldBook): a replica learns that a hold it granted was settled by
-- another replica from the record that names it. The holds table is no longer written.
CREATE INDEX usage_records_hold ON usage_records (hold_id) WHERE hold_id <> 0;
