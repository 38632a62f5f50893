-- settled_at serves only the hourly prune by age (DELETE ... WHERE settled_at < now() - 40 days),
-- and rows arrive in time order: a BRIN index (one summary per range of pages) costs nothing per
-- settlement, where the btree took an entry for every request settled.
DROP INDEX settled_requests_settled_at;
CREATE INDEX settled_requests_settled_at ON settled_requests USING brin (settled_at);
