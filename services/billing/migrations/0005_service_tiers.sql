-- What each OpenAI service_tier costs relative to the default one ("priority" x2, "flex" x0.5):
-- cost = price x the user's multiplier x the tier's. A tier without a row is x1.
CREATE TABLE service_tier_multipliers (
  tier           TEXT PRIMARY KEY,
  multiplier_ppm BIGINT NOT NULL CHECK (multiplier_ppm > 0)
);

-- The tier that served each record ('': the default tier) and the tier multiplier it was charged
-- with, next to the price row and user multiplier already kept.
ALTER TABLE usage_records
  ADD COLUMN service_tier TEXT NOT NULL DEFAULT '',
  ADD COLUMN service_tier_multiplier_ppm BIGINT NOT NULL DEFAULT 1000000;
