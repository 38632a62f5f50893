-- Hold is idempotent on the request id: an edge that retries a Hold (its first
-- call timed out) gets the same hold back instead of reserving the money twice.
CREATE UNIQUE INDEX holds_request ON holds (request_id) WHERE request_id <> '';
