// The key pool: an in-memory snapshot of the catalogue with the secrets
// decrypted, so Route never touches the database; smooth weighted round-robin
// among a model's healthy keys; circuit breakers and 429 cooldowns.
//
// Health has two scopes, because providers fail and rate-limit per model
// (OpenAI's limits are per model and organisation; one Azure deployment can be
// down while the others serve):
// - per (key, upstream model): timeouts and 5xx feed its breaker, a 429 cools
//   it down. A model's trouble never takes the key away from other models.
// - key-wide: connect errors and 401/403 (the key itself, or the way to it, is
//   bad) feed the key's own breaker, which takes the key out for every model.
// A plan for model M skips a key whose key-wide state or whose (key, M) state
// is open or cooling down.
//
// Breaker, per scope: `failure_threshold` consecutive failures open it for
// `breaker_cooldown`. After the cooldown it is half-open: exactly one Route
// hands the key out as a trial (always as the first attempt, the one the edge
// surely makes); its outcome closes the breaker (the key answered: success,
// 4xx or 429) or reopens it (another failure of that scope). An outcome that
// says nothing about the scope (a connect error for a model's breaker, a 5xx
// for the key's) frees the trial for the next plan. A trial with no reported
// outcome after `trial_timeout` is presumed lost and the next Route gets a new
// one. Success resets both scopes' counts. A 429 takes the (key, model) out of
// rotation for its retry-after (or `rate_limit_cooldown`) without counting as
// a failure.
//
// An outcome without an upstream model (an edge older than per-model health)
// is applied key-wide, as all outcomes were before.
//
// Health is per replica and survives catalogue reloads; it is reset only when
// the key's secret is rotated. Memory is bounded by the catalogue: a (key,
// upstream model) entry exists only for a route of the key's provider, and
// entries whose route is gone are dropped on the next reload. Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tollgate/clock.h"
#include "tollgate/router/catalogue.h"

namespace tollgate::router {

struct KeyPoolOptions {
  int failure_threshold = 3;
  std::chrono::milliseconds breaker_cooldown{30000};
  std::chrono::milliseconds trial_timeout{60000};
  std::chrono::milliseconds rate_limit_cooldown{10000};
  // Attempts in a plan when the caller asks for 0.
  int max_attempts = 3;
};

struct RouteAttempt {
  int64_t key_id = 0;
  ProviderType provider_type = ProviderType::kOpenAi;
  std::string base_url;
  std::string upstream_model;
  std::string api_key;
  std::string api_version;
  bool trial = false;
};

struct RouteResult {
  // kNoRoute: the model exists but no usable key serves it (no route, or only
  // disabled keys or providers); kNoHealthyUpstream: it has keys, all out.
  enum class Status { kOk, kModelNotFound, kNoHealthyUpstream, kNoRoute };
  Status status = Status::kOk;
  std::string model;              // canonical name (aliases resolved); empty when not found
  int64_t max_output_tokens = 0;  // the canonical model's completion limits (ModelRecord)
  int64_t default_max_tokens = 0;
  std::vector<RouteAttempt> attempts;
};

enum class OutcomeKind {
  kUnspecified,
  kSuccess,
  kConnectError,
  kTimeout,
  kServerError,
  kRateLimited,
  kClientError,
  kAuthError,
};

struct Outcome {
  int64_t key_id = 0;
  OutcomeKind kind = OutcomeKind::kUnspecified;
  int64_t retry_after_ms = 0;  // 429 only; 0: the configured default
  // The model the attempt asked the upstream for (RouteAttempt::upstream_model);
  // empty: unknown, the outcome is applied key-wide.
  std::string upstream_model;
};

enum class BreakerState { kClosed, kOpen, kHalfOpen };

// One (key, upstream model) pair's breaker and 429 cooldown.
struct ModelHealth {
  std::string upstream_model;
  BreakerState state = BreakerState::kClosed;
  int32_t consecutive_failures = 0;
  std::chrono::milliseconds breaker_remaining{0};
  std::chrono::milliseconds rate_limit_remaining{0};
  bool trial_in_flight = false;
  int64_t requests = 0;  // outcomes reported for this model
  int64_t failures = 0;  // outcomes that counted against this model's breaker
};

// A key's key-wide breaker (and the 429 cooldown of outcomes that named no
// model), with its per-model states.
struct KeyHealth {
  int64_t key_id = 0;
  BreakerState state = BreakerState::kClosed;
  int32_t consecutive_failures = 0;
  // Time left until an open breaker turns half-open; zero otherwise.
  std::chrono::milliseconds breaker_remaining{0};
  // Time left in a 429 cooldown; zero otherwise.
  std::chrono::milliseconds rate_limit_remaining{0};
  bool trial_in_flight = false;
  int64_t requests = 0;  // outcomes reported for this key, every model
  int64_t failures = 0;  // outcomes that counted against any of its breakers
  // One per upstream model routed to this key's provider, by name.
  std::vector<ModelHealth> models;
};

struct ModelInfo {
  std::string id;  // model name or alias
  int64_t created = 0;
  std::string owned_by;
};

// Reveals a key's plaintext secret; nullopt if it cannot be decrypted.
using SecretOpener = std::function<std::optional<std::string>(const UpstreamKeyRecord&)>;

class KeyPool final {
 public:
  KeyPool(KeyPoolOptions options, const Clock& clock);
  KeyPool(const KeyPool&) = delete;
  KeyPool& operator=(const KeyPool&) = delete;

  // Swaps in a new catalogue. Returns the ids of keys whose secret could not be
  // opened (they are kept out of rotation).
  std::vector<int64_t> Replace(const Catalogue& catalogue, const SecretOpener& open);

  // The plan for a public model name or alias: the weighted round-robin pick
  // first, then the other healthy keys in round-robin order, at most
  // `max_attempts` (0: the configured default).
  RouteResult Route(std::string_view model, int max_attempts = 0);

  // The attempt of key `key_id` for a model name or alias, whatever the key's health: a
  // Responses API object lives only in the upstream account that created it, so calls about it
  // go to that key or nowhere (the edge's responses.cpp). kOk with that one attempt;
  // kModelNotFound for an unknown model; kNoRoute when the key no longer serves the model or is
  // unusable (deleted, disabled, its provider disabled).
  RouteResult KeyAttempt(std::string_view model, int64_t key_id) const;

  // Feeds the key's breakers. Returns false for a key the pool does not know
  // (deleted) or an unspecified kind.
  bool Report(const Outcome& outcome);

  std::optional<KeyHealth> Health(int64_t key_id) const;
  // Every key of the catalogue, by id.
  std::vector<KeyHealth> Health() const;
  // Models and aliases, sorted by id.
  std::vector<ModelInfo> ListModels() const;

  const KeyPoolOptions& options() const { return options_; }

 private:
  // One scope's breaker and cooldown: a key's key-wide one, or a (key, model) one.
  struct Breaker {
    int32_t consecutive_failures = 0;
    bool open = false;
    Clock::SteadyTime open_until{};
    bool trial_in_flight = false;
    Clock::SteadyTime trial_deadline{};
    // 429 cooldown.
    Clock::SteadyTime rate_limited_until{};
    int64_t requests = 0;
    int64_t failures = 0;
  };
  struct KeyState {
    int32_t weight = 1;
    bool usable = false;  // enabled, provider enabled, secret readable
    std::string api_key;
    std::string nonce;  // a new nonce means a rotated secret: the health starts over
    Breaker key_wide;
    // By upstream model: exactly the routes of the key's provider.
    std::map<std::string, Breaker, std::less<>> models;
  };
  struct Candidate {
    KeyState* key = nullptr;
    Breaker* model = nullptr;  // key->models[upstream_model]
    int64_t key_id = 0;
    ProviderType provider_type = ProviderType::kOpenAi;
    std::string base_url;
    std::string api_version;
    std::string upstream_model;
    int64_t current = 0;  // smooth weighted round-robin state
  };
  struct ModelEntry {
    ModelRecord record;
    std::vector<Candidate> candidates;
  };
  enum class Gate { kBlocked, kHealthy, kTrial };

  static Gate GateOf(const Breaker& breaker, Clock::SteadyTime now);
  static Gate GateOf(const Candidate& candidate, Clock::SteadyTime now);
  KeyHealth HealthOf(int64_t id, const KeyState& key, Clock::SteadyTime now) const;
  static RouteAttempt AttemptFor(const Candidate& candidate);

  const KeyPoolOptions options_;
  const Clock& clock_;
  mutable std::mutex mu_;
  std::unordered_map<int64_t, KeyState> keys_;
  std::map<std::string, ModelEntry, std::less<>> models_;
  std::map<std::string, std::string, std::less<>> aliases_;
};

}  // namespace tollgate::router
