-- Prompt-cache writes (Anthropic's cache_creation_input_tokens) have their own price, 1.25x the
-- input price for 5-minute caching. NULL: the input price, so every existing price keeps
-- charging cache writes as it did before (as plain input).
ALTER TABLE prices
  ADD COLUMN cache_write_micros_per_mtok BIGINT CHECK (cache_write_micros_per_mtok >= 0);

-- The part of each record's prompt_tokens written to the provider's cache, next to the part read
-- from it (cached_tokens); per day too, for reports.
ALTER TABLE usage_records ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
