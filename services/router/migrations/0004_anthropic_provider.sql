-- Provider type 'anthropic' (issue #11): Anthropic's Messages API, translated by the edge.
ALTER TABLE providers DROP CONSTRAINT providers_type_check;
ALTER TABLE providers ADD CONSTRAINT providers_type_check
  CHECK (type IN ('openai', 'azure-openai', 'openai-compatible', 'anthropic'));
