// The seams between the edge's request path and the services it calls. The request path only
// sees these interfaces; module.cpp wires the gRPC implementations (GrpcAuthClient,
// GrpcQuotaClient, GrpcRouterClient or LocalRouterClient, GrpcBillingClient, all built on
// grpc_call.h); tests use fakes (services/edge/test/permissive_clients.h).
//
// Every call is asynchronous: it returns at once and runs `done` exactly once, on any thread
// (a gRPC callback thread, or inline). Callers bridge it back to their own executor
// (see async.h). Implementations must never block the calling thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "src/openai.h"
#include "tollgate/errors.h"

namespace tollgate::edge {

// Why a call was refused, in the terms a client will see.
struct Failure {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  int64_t retry_after_ms = 0;  // for 429s; 0: none
};

// Who is calling: what the auth service knows about an API key.
struct Principal {
  std::string api_key_id;
  std::string user_id;  // billing's accounts are per user
  // Model names or patterns ("gpt-4o*") the key may use; empty: every model. The edge checks
  // them (auth::ModelAllowed), since only it knows the model.
  std::vector<std::string> allowed_models;
  // The key's limits policy for the quota service; empty: the default.
  std::string limits_ref;
  // The key opted in to storing its requests' bodies (redacted) with their usage records.
  bool store_bodies = false;
};

struct AuthResult {
  std::optional<Failure> failure;
  Principal principal;
};

class AuthClient {
 public:
  virtual ~AuthClient() = default;
  // `api_key` as presented (Authorization: Bearer or api-key); may be empty.
  virtual void Authenticate(std::string api_key, std::string client_ip,
                            std::function<void(AuthResult)> done) = 0;
};

struct AdmitRequest {
  std::string request_id;
  Principal principal;
  std::string model;             // canonical (aliases resolved)
  int64_t estimated_tokens = 0;  // WorstCaseTokens: prompt estimate + budget x choices
  std::string client_ip;         // rate limited per IP too
};

// One rate window as OpenAI's x-ratelimit-* headers describe it; limit 0: unlimited (no headers).
struct RateLimitWindow {
  int64_t limit = 0;
  int64_t remaining = 0;
  int64_t reset_ms = 0;  // until the window is back to its full limit
};

struct AdmitResult {
  std::optional<Failure> failure;
  std::string reservation_id;  // settled later from the UsageRecord
  // The key's tightest windows (also on denials), for the x-ratelimit-* headers.
  RateLimitWindow requests;
  RateLimitWindow tokens;
};

struct UsageRecord;

class QuotaClient {
 public:
  virtual ~QuotaClient() = default;
  virtual void Admit(AdmitRequest request, std::function<void(AdmitResult)> done) = 0;
  // Gives back a reservation whose request never ran (another admission check refused it).
  virtual void Release(std::string reservation_id) = 0;
  // Replaces the reservation with the record's actual tokens; queued and sent off the request
  // path, retried until acknowledged (the quota service is idempotent on request_id).
  virtual void Settle(const UsageRecord& record) = 0;
};

// Priced on the canonical model (an alias has no price of its own) for the worst case.
struct HoldRequest {
  std::string request_id;
  Principal principal;
  std::string model;
  int64_t estimated_prompt_tokens = 0;
  int64_t max_completion_tokens = 0;  // WorstCaseCompletionTokens: budget x choices
  // The service_tier the client asked for (allowed by the field policy); empty: none. The hold
  // is priced with its multiplier, as the record will be.
  std::string service_tier;
  // Endpoints billed by units (endpoint_kinds.h, WorstCaseUnits): the most each can come to.
  int64_t images = 0;
  int64_t audio_ms = 0;
  int64_t characters = 0;
  // The least the hold may be, in micro-units (the /v1 catch-all: edge.passthrough.hold_micros,
  // so an exhausted balance is refused even for a call no token count prices); 0: none.
  int64_t min_amount_micros = 0;
};

struct HoldResult {
  std::optional<Failure> failure;
  std::string hold_id;
};

// What the edge reports once per request, after the response (or the client) ended. Billing and
// quota settle from it; both are idempotent on request_id.
struct UsageRecord {
  std::string request_id;
  Principal principal;
  std::string reservation_id;
  std::string hold_id;
  std::string model;            // public name, as routed
  std::string upstream_model;   // what the upstream was asked for
  int64_t upstream_key_id = 0;  // the attempt that answered; 0: none did
  int32_t attempts = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;       // part of prompt_tokens read from the provider's prompt cache
  int64_t cache_write_tokens = 0;  // part of prompt_tokens written to it (priced apart)
  // The tokens are the edge's estimate (EstimateTokens) because the upstream sent no usage,
  // e.g. the client left mid-stream before the usage chunk.
  bool usage_estimated = false;
  bool streamed = false;
  // The tier that served the request: the upstream answer's own service_tier when it has one,
  // else the tier asked for; empty: the default tier. Billing prices it.
  std::string service_tier;
  // What the endpoint bills by beyond tokens (endpoint_kinds.h, ApplyUnits): its kind's label,
  // images with their size and quality, audio duration, input characters.
  std::string endpoint_kind;
  int64_t images = 0;
  std::string image_size;
  std::string image_quality;
  int64_t audio_ms = 0;
  int64_t characters = 0;
  int32_t http_status = 0;  // what the client got (or was getting when it left)
  std::chrono::milliseconds latency{0};
  bool client_disconnected = false;
  // Billing's idempotency key (the hold's too): an id the edge generated itself, never a
  // client's x-request-id (a client repeating one would be billed once for many requests).
  std::string billing_id;
  std::string client_ip;
  // Only for keys with store_bodies: what the client sent and what it got, secrets redacted
  // (RedactSecrets), each cut at edge.store_bodies_max_bytes (then *_truncated is set).
  std::string request_body;
  std::string response_body;
  bool bodies_truncated = false;
};

// A user's own account, for GET /dashboard/billing/subscription (micro-units of the currency).
struct AccountResult {
  std::optional<Failure> failure;
  bool found = false;  // false: the user has no account (nothing is held or limited)
  int64_t balance_micros = 0;
  int64_t credit_limit_micros = 0;
  int64_t held_micros = 0;
  int64_t available_micros = 0;
  int64_t total_top_ups_micros = 0;
  int64_t total_cost_micros = 0;
};

// Usage per UTC day (oldest first), for GET /v1/usage and /dashboard/billing/usage.
struct UsageDay {
  std::string day;  // YYYY-MM-DD
  int64_t requests = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t cost_micros = 0;
};

struct UsageResult {
  std::optional<Failure> failure;
  std::vector<UsageDay> days;
};

class BillingClient {
 public:
  virtual ~BillingClient() = default;
  virtual void Hold(HoldRequest request, std::function<void(HoldResult)> done) = 0;
  // Gives back a hold whose request never ran.
  virtual void Release(std::string hold_id) = 0;
  // Takes the record for delivery; returns at once (the real one spools it).
  virtual void Record(UsageRecord record) = 0;
  // The caller's own account and usage (days inclusive, YYYY-MM-DD; `key_only`: only the
  // principal's key, else every key of its user).
  virtual void GetAccount(const Principal& principal, std::function<void(AccountResult)> done) = 0;
  virtual void GetUsage(const Principal& principal, bool key_only, std::string from_day,
                        std::string to_day, std::function<void(UsageResult)> done) = 0;
};

// One upstream attempt of a route plan. `api_key` is a secret: never logged, never returned.
struct UpstreamAttempt {
  int64_t upstream_key_id = 0;
  ProviderKind provider = ProviderKind::kOpenAi;
  std::string base_url;
  std::string upstream_model;
  std::string api_key;
  std::string api_version;
};

struct RouteResult {
  std::optional<Failure> failure;
  std::string model;   // canonical public name
  ModelLimits limits;  // the canonical model's completion limits (catalogue)
  std::vector<UpstreamAttempt> attempts;
};

enum class OutcomeKind {
  kSuccess,
  kConnectError,
  kTimeout,
  kServerError,
  kRateLimited,
  kClientError,
  kAuthError,
};

const char* OutcomeName(OutcomeKind kind);

struct AttemptOutcome {
  int64_t upstream_key_id = 0;
  OutcomeKind kind = OutcomeKind::kSuccess;
  int32_t http_status = 0;
  int64_t retry_after_ms = 0;
  int64_t latency_ms = 0;
  // The attempt's upstream model: timeouts, 5xx and 429s count against this model of the key
  // only (connect errors and 401/403 against the whole key).
  std::string upstream_model;
};

struct ModelInfo {
  std::string id;
  int64_t created = 0;
  std::string owned_by;
};

struct ModelsResult {
  std::optional<Failure> failure;
  std::vector<ModelInfo> models;
};

class RouterClient {
 public:
  virtual ~RouterClient() = default;
  virtual void Route(std::string model, int32_t max_attempts,
                     std::function<void(RouteResult)> done) = 0;
  // Queues the outcome; delivery is batched and off the request path.
  virtual void Report(AttemptOutcome outcome) = 0;
  virtual void ListModels(std::function<void(ModelsResult)> done) = 0;
  // The attempt of upstream key `key_id` for `model`, for calls about a Responses API object,
  // which lives only in the upstream account that created it (responses.cpp). A failure
  // kNotFound when the key no longer serves the model (deleted, disabled, route gone). This
  // default plans the model and keeps that key's attempt, so a key out of rotation is
  // kNoHealthyUpstream; LocalRouterClient hands it out whatever its health.
  virtual void KeyAttempt(std::string model, int64_t key_id, std::function<void(RouteResult)> done);
};

}  // namespace tollgate::edge
