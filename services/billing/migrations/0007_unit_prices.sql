-- Endpoints billed beyond tokens (issue #12): images by size and quality, audio by duration, text
-- to speech by input characters. Prices: per image (a JSON array of {size, quality,
-- micros_per_image}; "" matches any), per minute of audio, per 1M characters; 0: not priced.
ALTER TABLE prices
  ADD COLUMN image_prices JSONB NOT NULL DEFAULT '[]',
  ADD COLUMN audio_micros_per_minute BIGINT NOT NULL DEFAULT 0 CHECK (audio_micros_per_minute >= 0),
  ADD COLUMN micros_per_mchar BIGINT NOT NULL DEFAULT 0 CHECK (micros_per_mchar >= 0);

-- What each record was billed by besides tokens: its endpoint kind ('': a token endpoint written
-- before this migration) and its units.
ALTER TABLE usage_records
  ADD COLUMN endpoint_kind TEXT NOT NULL DEFAULT '',
  ADD COLUMN images BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN image_size TEXT NOT NULL DEFAULT '',
  ADD COLUMN image_quality TEXT NOT NULL DEFAULT '',
  ADD COLUMN audio_milliseconds BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN characters BIGINT NOT NULL DEFAULT 0;
