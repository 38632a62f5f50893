-- Completion limits per model: the most completion tokens a request may ask for and the budget
-- of a request that asks for none (0: not configured). The edge admits, holds and caps the
-- upstream answer with them, so a request without max_tokens cannot cost more than was held.
ALTER TABLE models
  ADD COLUMN max_output_tokens BIGINT NOT NULL DEFAULT 0 CHECK (max_output_tokens >= 0),
  ADD COLUMN default_max_tokens BIGINT NOT NULL DEFAULT 0 CHECK (default_max_tokens >= 0);
