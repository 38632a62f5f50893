-- Bumped by every change of an account's balance or credit limit, in the statement that makes it.
-- A billing replica's hold book knows which charges a balance it reads already includes.
ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
