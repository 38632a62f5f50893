// The one list of configuration keys. A key not listed here is rejected.
#include "tollgate/config.h"

namespace tollgate {
namespace {

void AddDbService(std::vector<ConfigKey>& keys, const std::string& svc, int port) {
  using T = ConfigType;
  keys.push_back({svc + ".grpc_listen", T::kHostPort, "127.0.0.1:" + std::to_string(port),
                  "address the " + svc + " gRPC server binds"});
  keys.push_back({svc + ".database.dsn", T::kString,
                  "host=127.0.0.1 port=5432 user=postgres dbname=tollgate_" + svc,
                  "libpq connection string of the " + svc +
                      " database (a password only via the environment or dsn_file)"});
  keys.push_back({svc + ".database.dsn_file", T::kString, "",
                  "file holding the DSN (takes precedence over dsn)"});
  keys.push_back(
      {svc + ".database.pool_size", T::kInt, "8", "connections in the pool", false, 1, 256});
  keys.push_back({svc + ".database.acquire_timeout", T::kDuration, "2s",
                  "how long a caller waits for a free connection", false, 1, 600000});
  keys.push_back({svc + ".database.connect_timeout", T::kDuration, "30s",
                  "how long start-up waits for the database to accept connections", false, 0,
                  3600000});
  keys.push_back(
      {svc + ".workers", T::kInt, "8", "threads for blocking database work", false, 1, 256});
  keys.push_back({svc + ".worker_queue", T::kInt, "10000",
                  "calls waiting for a worker at most; beyond it a call is answered UNAVAILABLE",
                  false, 1, 1000000});
}

std::vector<ConfigKey> BuildSchema() {
  using T = ConfigType;
  std::vector<ConfigKey> keys = {
      {"log.level",
       T::kEnum,
       "info",
       "debug, info, warn or error",
       false,
       INT64_MIN,
       INT64_MAX,
       {"debug", "info", "warn", "error"}},
      {"metrics.listen", T::kHostPort, "127.0.0.1:9464",
       "address of this process's Prometheus /metrics endpoint"},
      {"shutdown.drain_timeout", T::kDuration, "10s",
       "on SIGTERM, how long in-flight work may take to finish", false, 0, 3600000},
      {"admin.token", T::kString, "",
       "token of the admin identity (tollgatectl): every admin RPC needs it or a client "
       "certificate naming tollgate://admin",
       true},
      {"admin.token_rotation", T::kString, "",
       "during a rotation of admin.token, a second admin token the services also accept (never "
       "sent): set the new token here everywhere, then swap the two, then clear this",
       true},
      {"grpc.service_tokens.edge", T::kString, "",
       "the edge's internal service token (at least 16 characters, distinct from admin.token), "
       "sent as `authorization: Bearer` on every call the edge makes and required by every "
       "data-path RPC unless a client certificate names tollgate://edge; unset: a random token "
       "for this process alone (enough for --target=all)",
       true},
      {"grpc.service_tokens.edge_rotation", T::kString, "",
       "during a rotation of grpc.service_tokens.edge, a second edge token the services also "
       "accept (never sent): set the new token here everywhere, then swap the two, then clear "
       "this; no process refuses the edge at any step",
       true},
      {"grpc.allow_insecure", T::kBool, "false",
       "let a service listen for gRPC on a non-loopback address with neither mutual TLS nor "
       "grpc.service_tokens.edge (a mesh that does mTLS itself), and treat a call without any "
       "credential as the edge; logged loudly and shown as tollgate_grpc_insecure 1"},
      {"grpc.tls.cert_file", T::kString, "",
       "PEM certificate this process presents on gRPC, as server and as client (mutual TLS)"},
      {"grpc.tls.key_file", T::kString, "", "PEM private key of grpc.tls.cert_file"},
      {"grpc.tls.ca_file", T::kString, "",
       "PEM CA bundle that peers' gRPC certificates must chain to (all three set: mutual TLS)"},
      {"grpc.tls.refresh_interval", T::kDuration, "60s",
       "how often the three grpc.tls files are re-read: new connections use a renewed "
       "certificate, key or CA bundle without a restart; established ones are kept"},
  };
  AddDbService(keys, "auth", 7101);
  AddDbService(keys, "quota", 7102);
  AddDbService(keys, "router", 7103);
  AddDbService(keys, "billing", 7104);
  // router: the upstream key pool (services/router).
  std::vector<ConfigKey> router = {
      {"router.master_key", T::kString, "",
       "32-byte AES-256-GCM key that encrypts upstream secrets at rest: 64 hex characters or "
       "base64 (e.g. `openssl rand -hex 32`)",
       true},
      {"router.max_attempts", T::kInt, "3",
       "upstream attempts a Route plan holds when the caller does not ask for a number", false, 1,
       16},
      {"router.breaker.failure_threshold", T::kInt, "3",
       "consecutive failures that open a breaker: timeouts and 5xx a (key, upstream model) "
       "pair's, connect errors and 401/403 the key's own (every model)",
       false, 1, 1000},
      {"router.breaker.cooldown", T::kDuration, "30s",
       "how long an open breaker keeps a key out before one trial request", false, 1, 86400000},
      {"router.breaker.trial_timeout", T::kDuration, "60s",
       "how long a half-open key waits for its trial's outcome before granting another trial",
       false, 1, 3600000},
      {"router.rate_limit_cooldown", T::kDuration, "10s",
       "how long a 429 without retry-after keeps a key out of rotation for that upstream model",
       false, 1, 3600000},
      {"router.cache_refresh", T::kDuration, "1s",
       "how often the catalogue is reloaded from the database (admin changes made on another "
       "replica show up within this)",
       false, 50, 3600000},
  };
  keys.insert(keys.end(), router.begin(), router.end());
  // billing: holds and usage records (services/billing).
  std::vector<ConfigKey> billing = {
      {"billing.balance_refresh", T::kDuration, "1s",
       "how often a billing replica reloads the balances behind its in-memory holds (top-ups and "
       "charges made through other replicas reach its decisions within this)"},
      {"billing.hold_ttl", T::kDuration, "10m",
       "a hold neither settled by its usage record nor released stops counting after this", false,
       1000, 86400000},
      {"billing.budget_ttl", T::kDuration, "1s",
       "an edge spends a budget (money of a user granted in advance) until it asked + this; "
       "billing counts it until its last renewal + this + billing.hold_ttl, and a restarted "
       "replica grants no hold or budget for this long after start",
       false, 100, 60000},
      {"billing.budget_min_headroom", T::kInt, "1000000",
       "micro-units: a user whose balance + credit limit - held is below this gets no budget, so "
       "the last money is held request by request",
       false, 0, 1000000000000000},
      {"billing.ingest_max_records", T::kInt, "2000",
       "usage records written in one transaction at most (RecordUsage calls queued meanwhile "
       "share one commit)",
       false, 1, 100000},
  };
  keys.insert(keys.end(), billing.begin(), billing.end());
  // quota: rate limits and token quotas (services/quota). 0: unlimited.
  std::vector<ConfigKey> quota = {
      {"quota.default_key_rpm", T::kInt, "0", "requests per minute per API key (sliding window)",
       false, 0, INT64_MAX},
      {"quota.default_key_tpm", T::kInt, "0", "tokens per minute per API key (sliding window)",
       false, 0, INT64_MAX},
      {"quota.default_key_monthly_tokens", T::kInt, "0",
       "tokens per calendar month (UTC) per API key", false, 0, INT64_MAX},
      {"quota.default_key_daily_tokens", T::kInt, "0", "tokens per calendar day (UTC) per API key",
       false, 0, INT64_MAX},
      {"quota.default_user_monthly_tokens", T::kInt, "0",
       "tokens per calendar month (UTC) per user, over all of their keys", false, 0, INT64_MAX},
      {"quota.default_user_daily_tokens", T::kInt, "0",
       "tokens per calendar day (UTC) per user, over all of their keys", false, 0, INT64_MAX},
      {"quota.default_ip_rpm", T::kInt, "0", "requests per minute per client IP (sliding window)",
       false, 0, INT64_MAX},
      {"quota.default_ip_tpm", T::kInt, "0", "tokens per minute per client IP (sliding window)",
       false, 0, INT64_MAX},
      {"quota.reservation_ttl", T::kDuration, "10m",
       "an admitted request's reservation is dropped if not settled or released within this "
       "(a crashed edge leaks nothing); keep it above the longest request",
       false, 1000, 86400000},
      {"quota.lease_ttl", T::kDuration, "1s",
       "how long a lease (capacity granted to an edge in advance, admitted from its memory) may "
       "be used; a restarted replica admits nothing for this long (an earlier incarnation's "
       "leases may still be in use). 0: no leases, every request is admitted here",
       false, 0, 60000},
      {"quota.lease_min_headroom", T::kInt, "64",
       "no lease of a subject whose requests-per-minute headroom is below this: its requests "
       "are admitted here one at a time",
       false, 1, INT64_MAX},
      {"quota.policy_refresh", T::kDuration, "1s",
       "how often policy overrides are reloaded from the database (changes made through another "
       "replica reach this one within this)",
       false, 50, 3600000},
  };
  keys.insert(keys.end(), quota.begin(), quota.end());
  // auth: users and API keys (services/auth).
  std::vector<ConfigKey> auth = {
      {"auth.cache_refresh", T::kDuration, "1s",
       "how often keys changed in the database are reloaded (admin changes made on another auth "
       "replica reach this one, and the edges watching it, within this)",
       false, 50, 3600000},
      {"auth.cache_full_reload", T::kDuration, "5m",
       "how often every key is reloaded, as a check on the incremental reloads", false, 1000,
       86400000},
      {"auth.last_used_flush_interval", T::kDuration, "5s",
       "how often keys' last-used times are written to the database (one batch each time)", false,
       100, 3600000},
      {"auth.watch_heartbeat", T::kDuration, "5s",
       "an idle WatchKeys stream gets an empty message this often, so edges notice a dead one",
       false, 100, 600000},
  };
  keys.insert(keys.end(), auth.begin(), auth.end());
  std::vector<ConfigKey> edge = {
      {"edge.listen", T::kHostPort, "127.0.0.1:8080", "address of the OpenAI-compatible HTTP API"},
      {"edge.threads", T::kInt, "0", "I/O threads (0: one per core)", false, 0, 256},
      {"edge.auth_target", T::kString, "127.0.0.1:7101", "gRPC address of the auth service"},
      {"edge.quota_targets", T::kStringList, "127.0.0.1:7102",
       "gRPC addresses of the quota replicas, in ordinal order"},
      {"edge.quota_fail_open", T::kBool, "false",
       "when a quota replica is unreachable, admit requests unlimited instead of answering 503 "
       "(logged and counted either way)"},
      {"edge.quota_leases", T::kBool, "true",
       "admit from leases (capacity the quota replicas grant the edge in advance) instead of an "
       "Admit call per request; close to a limit the replica grants none and requests are "
       "admitted one at a time as without leases"},
      {"edge.quota_lease_interval", T::kDuration, "10ms",
       "how often the edge asks for, renews and returns leases (one Lease call per replica)", false,
       1, 1000},
      {"edge.billing_budgets", T::kBool, "true",
       "hold from budgets (money of a user billing grants the edge in advance, one hold for the "
       "sum) instead of a Hold call per request; close to the end of a user's money billing "
       "grants none and requests are held one at a time as without budgets"},
      {"edge.billing_budget_interval", T::kDuration, "10ms",
       "how often the edge asks for, refills and returns budgets (one Budget call for every "
       "user)",
       false, 1, 1000},
      {"edge.quota_default_max_tokens", T::kInt, "4096",
       "completion budget of a request that sets no max_tokens when its model has no "
       "default_max_tokens (tollgatectl router set-model-limits): quota admits and billing holds "
       "for it, and the edge sends it upstream as the request's limit",
       false, 1, 10000000},
      {"edge.local_routing", T::kBool, "true",
       "plan each request in the edge from the router's catalogue (polled every "
       "edge.routing_refresh; weighted round-robin, breakers and 429 cooldowns per edge process) "
       "instead of a Route call to the router per request"},
      {"edge.routing_refresh", T::kDuration, "1s",
       "how often the edge polls the router's catalogue (GetRoutingTable) when edge.local_routing "
       "is on; catalogue changes reach the edges within this"},
      {"edge.router_target", T::kString, "127.0.0.1:7103", "gRPC address of the router service"},
      {"edge.billing_target", T::kString, "127.0.0.1:7104", "gRPC address of the billing service"},
      {"edge.spool_dir", T::kString, "/tmp/tollgate-edge-spool",
       "directory of the edge's on-disk spool of usage records on their way to billing (one per "
       "edge process; replayed at start)"},
      {"edge.spool_max_bytes", T::kInt, "268435456",
       "bound of the usage record spool; when full, new records are dropped (logged, counted)",
       false, 65536, 1099511627776},
      {"edge.store_bodies_max_bytes", T::kInt, "65536",
       "for API keys with store_bodies: each of the request and the response body is kept up to "
       "this many bytes (secrets redacted) with the usage record in billing",
       false, 1024, 1048576},
      // What a client may ask of the operator's upstream account
      // (services/edge/src/field_policy.h).
      {"edge.response_id_secret", T::kString, "",
       "key (at least 16 characters) that signs the Responses API ids the edge hands out (each "
       "names the upstream key and the user that own the response), shared by every edge; unset: "
       "derived from grpc.service_tokens.edge, else random for this process alone (enough for "
       "--target=all: ids then die with the process)",
       true},
      {"edge.strip_fields",
       T::kStringList,
       "store",
       "top-level request body fields removed before the body goes upstream (`store`: nothing is "
       "kept in the operator's upstream account unless the operator allows it); not `model`, "
       "`stream` or `stream_options`; /v1/responses keeps `store` (its upstream default is true, "
       "so stripping `store: false` would store the response; refuse it with edge.reject_fields)",
       false,
       INT64_MIN,
       INT64_MAX,
       {},
       true,
       "edge.reject_fields",
       {"model", "stream", "stream_options"},
       "the edge reads it itself (it can be refused instead)"},
      {"edge.reject_fields",
       T::kStringList,
       "",
       "top-level request body fields a request may not carry (400 invalid_request_error, param = "
       "the field); a field is either stripped or refused",
       false,
       INT64_MIN,
       INT64_MAX,
       {},
       true},
      {"edge.allowed_service_tiers",
       T::kStringList,
       "auto,default",
       "`service_tier` values a request may ask for (others: 400, param service_tier); other tiers "
       "than auto/default are priced by billing's service tier multipliers",
       false,
       INT64_MIN,
       INT64_MAX,
       {},
       true},
      {"edge.max_body_bytes", T::kInt, "4194304", "largest request body accepted (413 above)",
       false, 1024, 1073741824},
      {"edge.max_header_bytes", T::kInt, "16384", "largest request head accepted (413 above)",
       false, 1024, 1048576},
      {"edge.max_upload_bytes", T::kInt, "536870912",
       "largest request body of a route that streams its body to the upstream (the /v1 "
       "catch-all: file uploads...; audio transcriptions and translations; 413 above); such a "
       "body is never held whole in memory (an audio upload whose file comes before its model "
       "is held in an unnamed file under <edge.spool_dir>/uploads while it is sent)",
       false, 1024, 1099511627776},
      {"edge.passthrough.enabled", T::kBool, "true",
       "relay every other /v1/... path (files, batches, uploads, vector stores...) to an upstream "
       "as it is (false: 404)"},
      {"edge.passthrough.allowed_prefixes", T::kStringList, "",
       "path prefixes (each starting with /v1/, e.g. /v1/files,/v1/batches) the /v1 catch-all "
       "relays; other paths get 404; empty: all"},
      {"edge.passthrough.default_model", T::kString, "",
       "Tollgate model whose route serves catch-all requests that name no model (files, "
       "batches...): always its lowest-id healthy OpenAI or OpenAI-compatible upstream key, so "
       "every file lands on one upstream account; empty: such requests get 404"},
      {"edge.passthrough.hold_micros", T::kInt, "1",
       "least billing hold (micro-units) of a catch-all call: a user whose balance plus credit "
       "(less live holds) is below it gets 429 insufficient_quota before any upstream byte; a "
       "call naming a model holds the larger of this and its token worst case; 0: only an "
       "overdrawn account is refused",
       false, 0, 1000000000000},
      {"edge.trusted_proxies", T::kStringList, "",
       "networks (CIDRs, IPv4 or IPv6) of the proxies in front of the edge: from a peer inside "
       "them, the client's address is read from Forwarded (else X-Forwarded-For), right to left "
       "past trusted hops, for per-IP limits and key IP allowlists; empty: the connection's peer "
       "is the client"},
      {"edge.client_idle_timeout", T::kDuration, "60s",
       "a keep-alive client connection without a new request is closed after this", false, 100,
       3600000},
      {"edge.client_read_timeout", T::kDuration, "30s",
       "time a client has to send a whole request once it started", false, 100, 3600000},
      {"edge.client_write_timeout", T::kDuration, "30s",
       "time each write to a client may take; a client that stops reading is dropped", false, 100,
       3600000},
      {"edge.grpc_timeout", T::kDuration, "2s",
       "deadline of every call the edge makes to auth, quota, router and billing", false, 10,
       60000},
      {"edge.max_attempts", T::kInt, "3",
       "upstream attempts per request at most (failover), within the router's plan", false, 1, 16},
      {"edge.router_stale_plan_ttl", T::kDuration, "30s",
       "when the router is unreachable, reuse its last plan for a model this old at most (0: "
       "never; then 503)",
       false, 0, 3600000},
      {"edge.auth_cache_ttl", T::kDuration, "30s",
       "how long a cached principal is trusted without confirmation while the WatchKeys stream "
       "is down (while it is up, pushed changes keep the cache exact)",
       false, 100, 86400000},
      {"edge.auth_negative_cache_ttl", T::kDuration, "2s",
       "how long an unknown key is remembered as unknown (a key created meanwhile is pushed "
       "and replaces it)",
       false, 0, 600000},
      {"edge.auth_cache_max_entries", T::kInt, "100000", "principals the edge caches at most",
       false, 16, 100000000},
      {"edge.auth_max_stale", T::kDuration, "1h",
       "when auth is unreachable, a cached principal keeps working until this long past its TTL "
       "(0: not at all; unknown keys get 503 either way)",
       false, 0, 604800000},
      {"edge.auth_watch_idle_timeout", T::kDuration, "15s",
       "a WatchKeys stream silent this long (no change, no heartbeat) is reconnected", false, 500,
       3600000},
      {"edge.auth_watch_backoff_max", T::kDuration, "5s",
       "longest wait between WatchKeys reconnection attempts (from 100 ms, doubling)", false, 100,
       600000},
      {"edge.auth_usage_flush_interval", T::kDuration, "5s",
       "how often the keys used since the last report are sent to auth (last-used times)", false,
       100, 3600000},
      {"edge.outcome_flush_interval", T::kDuration, "100ms",
       "how often queued upstream outcomes are sent to the router", false, 1, 60000},
      {"edge.outcome_batch_size", T::kInt, "256",
       "outcomes per ReportOutcomes call; a full batch is sent at once", false, 1, 100000},
      {"edge.upstream.connect_timeout", T::kDuration, "5s",
       "DNS, TCP connect and TLS handshake to an upstream", false, 1, 600000},
      {"edge.upstream.first_byte_timeout", T::kDuration, "60s",
       "request sent to the upstream's response head; failover after it", false, 1, 3600000},
      {"edge.upstream.idle_timeout", T::kDuration, "60s",
       "longest silence between two pieces of an upstream body", false, 1, 3600000},
      {"edge.upstream.total_timeout", T::kDuration, "600s", "longest upstream exchange", false, 1,
       86400000},
      {"edge.upstream.pool_idle_timeout", T::kDuration, "30s",
       "an idle keep-alive upstream connection older than this is closed", false, 0, 3600000},
      {"edge.upstream.pool_max_idle_per_host", T::kInt, "256",
       "idle keep-alive connections kept per upstream host and I/O thread", false, 0, 4096},
      {"edge.upstream.ca_file", T::kString, "",
       "PEM file of extra CAs trusted for upstream TLS (the system's are always trusted)"},
  };
  keys.insert(keys.end(), edge.begin(), edge.end());
  return keys;
}

}  // namespace

const std::vector<ConfigKey>& ConfigSchema() {
  static const std::vector<ConfigKey> schema = BuildSchema();
  return schema;
}

}  // namespace tollgate
