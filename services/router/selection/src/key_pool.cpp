#include "tollgate/router/key_pool.h"

#include <algorithm>

namespace tollgate::router {
namespace {

// A retry-after longer than this is treated as this: a key must come back
// eventually even if an upstream asks for days.
constexpr std::chrono::milliseconds kMaxRateLimitCooldown = std::chrono::hours(1);
// Plans longer than this are never useful and only cost decryption copies.
constexpr int kMaxAttemptsCap = 16;

// What an outcome says about one scope of a key's health.
enum class Verdict {
  kNothing,   // not this scope's business: only a trial it decided nothing about is freed
  kSuccess,   // closes the breaker, resets the count
  kAnswered,  // the upstream answered (4xx, 429): a half-open breaker closes
  kFailure,   // counts towards opening; reopens a half-open breaker
};

// The key itself: can it be reached, is its credential accepted?
Verdict ForKey(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSuccess:
      return Verdict::kSuccess;
    case OutcomeKind::kClientError:
    case OutcomeKind::kRateLimited:
      return Verdict::kAnswered;
    case OutcomeKind::kConnectError:
    case OutcomeKind::kAuthError:
      return Verdict::kFailure;
    case OutcomeKind::kTimeout:
    case OutcomeKind::kServerError:
    case OutcomeKind::kUnspecified:
      break;
  }
  return Verdict::kNothing;
}

// One model behind the key: does it answer, in time, without a server error?
Verdict ForModel(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSuccess:
      return Verdict::kSuccess;
    case OutcomeKind::kClientError:
    case OutcomeKind::kRateLimited:
      return Verdict::kAnswered;
    case OutcomeKind::kTimeout:
    case OutcomeKind::kServerError:
      return Verdict::kFailure;
    case OutcomeKind::kConnectError:
    case OutcomeKind::kAuthError:
    case OutcomeKind::kUnspecified:
      break;
  }
  return Verdict::kNothing;
}

// An outcome that names no model: everything lands on the key, as before per-model health.
Verdict ForKeyOnly(OutcomeKind kind) {
  Verdict v = ForModel(kind);
  return v == Verdict::kNothing ? ForKey(kind) : v;
}

std::chrono::milliseconds Remaining(Clock::SteadyTime until, Clock::SteadyTime now) {
  if (until <= now) return std::chrono::milliseconds(0);
  // Round up so "1 ms left" never shows as 0 while the key is still out.
  return std::chrono::ceil<std::chrono::milliseconds>(until - now);
}

}  // namespace

KeyPool::KeyPool(KeyPoolOptions options, const Clock& clock)
    : options_(std::move(options)), clock_(clock) {}

std::vector<int64_t> KeyPool::Replace(const Catalogue& catalogue, const SecretOpener& open) {
  // Decrypt outside the lock: Route keeps answering from the old snapshot meanwhile.
  std::unordered_map<int64_t, const Provider*> providers;
  for (const auto& p : catalogue.providers) providers[p.id] = &p;
  std::vector<int64_t> unreadable;
  std::unordered_map<int64_t, KeyState> fresh;
  std::unordered_map<int64_t, std::vector<int64_t>> keys_by_provider;
  for (const auto& k : catalogue.keys) {
    KeyState state;
    state.weight = std::max<int32_t>(1, k.weight);
    state.nonce = k.secret.nonce;
    auto provider = providers.find(k.provider_id);
    bool provider_ok = provider != providers.end() && provider->second->enabled;
    if (k.enabled && provider_ok) {
      if (auto plain = open(k)) {
        state.api_key = std::move(*plain);
        state.usable = true;
      } else {
        unreadable.push_back(k.id);
      }
    }
    fresh.emplace(k.id, std::move(state));
    keys_by_provider[k.provider_id].push_back(k.id);
  }

  std::lock_guard lock(mu_);
  // Keep each key's health (and each model's round-robin position) across
  // reloads: a reload every second must not reset breakers or the rotation.
  // `previous`: the old state of a key whose secret is unchanged; null when it starts over.
  auto previous = [&](int64_t id, const KeyState& state) -> const KeyState* {
    auto old = keys_.find(id);
    return old == keys_.end() || old->second.nonce != state.nonce ? nullptr : &old->second;
  };
  for (auto& [id, state] : fresh)
    if (const KeyState* o = previous(id, state)) state.key_wide = o->key_wide;
  std::map<std::string, ModelEntry, std::less<>> models;
  for (const auto& m : catalogue.models) models[m.name].record = m;
  for (const auto& r : catalogue.routes) {
    auto model = models.find(r.model);
    auto provider = providers.find(r.provider_id);
    if (model == models.end() || provider == providers.end()) continue;
    for (int64_t key_id : keys_by_provider[r.provider_id]) {
      KeyState& key = fresh.at(key_id);
      // Only routed (key, upstream model) pairs get an entry: a pair whose route is gone
      // is dropped here, so the health kept is bounded by the catalogue.
      auto [health, added] = key.models.try_emplace(r.upstream_model);
      if (added) {
        if (const KeyState* o = previous(key_id, key)) {
          auto old = o->models.find(r.upstream_model);
          if (old != o->models.end()) health->second = old->second;
        }
      }
      Candidate c;
      c.key = &key;
      c.model = &health->second;
      c.key_id = key_id;
      c.provider_type = provider->second->type;
      c.base_url = provider->second->base_url;
      c.api_version = provider->second->api_version;
      c.upstream_model = r.upstream_model;
      model->second.candidates.push_back(std::move(c));
    }
  }
  for (auto& [name, entry] : models) {
    // A stable order, so ties in the round-robin always break the same way.
    std::sort(entry.candidates.begin(), entry.candidates.end(),
              [](const Candidate& a, const Candidate& b) { return a.key_id < b.key_id; });
    auto old = models_.find(name);
    if (old == models_.end()) continue;
    for (auto& c : entry.candidates)
      for (const auto& o : old->second.candidates)
        if (o.key_id == c.key_id) c.current = o.current;
  }
  std::map<std::string, std::string, std::less<>> aliases;
  for (const auto& a : catalogue.aliases)
    if (models.count(a.model)) aliases[a.alias] = a.model;

  // swap() keeps pointers to elements valid: the Candidates point into `fresh`.
  keys_.swap(fresh);
  models_.swap(models);
  aliases_.swap(aliases);
  return unreadable;
}

KeyPool::Gate KeyPool::GateOf(const Breaker& b, Clock::SteadyTime now) {
  if (now < b.rate_limited_until) return Gate::kBlocked;
  if (!b.open) return Gate::kHealthy;
  if (now < b.open_until) return Gate::kBlocked;
  if (b.trial_in_flight && now < b.trial_deadline) return Gate::kBlocked;
  return Gate::kTrial;
}

// Both scopes must let the key through; a trial of either makes the attempt a trial.
KeyPool::Gate KeyPool::GateOf(const Candidate& c, Clock::SteadyTime now) {
  if (!c.key->usable) return Gate::kBlocked;
  const Gate key = GateOf(c.key->key_wide, now);
  const Gate model = GateOf(*c.model, now);
  if (key == Gate::kBlocked || model == Gate::kBlocked) return Gate::kBlocked;
  if (key == Gate::kTrial || model == Gate::kTrial) return Gate::kTrial;
  return Gate::kHealthy;
}

RouteAttempt KeyPool::AttemptFor(const Candidate& c) {
  RouteAttempt a;
  a.key_id = c.key_id;
  a.provider_type = c.provider_type;
  a.base_url = c.base_url;
  a.upstream_model = c.upstream_model;
  a.api_key = c.key->api_key;
  a.api_version = c.api_version;
  return a;
}

RouteResult KeyPool::KeyAttempt(std::string_view model, int64_t key_id) const {
  RouteResult result;
  std::lock_guard lock(mu_);
  auto entry = models_.find(model);
  if (entry == models_.end()) {
    auto alias = aliases_.find(model);
    if (alias != aliases_.end()) entry = models_.find(alias->second);
  }
  if (entry == models_.end()) {
    result.status = RouteResult::Status::kModelNotFound;
    return result;
  }
  result.model = entry->first;
  result.max_output_tokens = entry->second.record.max_output_tokens;
  result.default_max_tokens = entry->second.record.default_max_tokens;
  for (const Candidate& c : entry->second.candidates) {
    if (c.key_id != key_id || !c.key->usable) continue;
    result.attempts.push_back(AttemptFor(c));
    return result;
  }
  result.status = RouteResult::Status::kNoRoute;
  return result;
}

RouteResult KeyPool::Route(std::string_view model, int max_attempts) {
  RouteResult result;
  int limit = max_attempts > 0 ? max_attempts : options_.max_attempts;
  limit = std::clamp(limit, 1, kMaxAttemptsCap);
  const auto now = clock_.SteadyNow();

  std::lock_guard lock(mu_);
  auto entry = models_.find(model);
  if (entry == models_.end()) {
    auto alias = aliases_.find(model);
    if (alias != aliases_.end()) entry = models_.find(alias->second);
  }
  if (entry == models_.end()) {
    result.status = RouteResult::Status::kModelNotFound;
    return result;
  }
  result.model = entry->first;
  result.max_output_tokens = entry->second.record.max_output_tokens;
  result.default_max_tokens = entry->second.record.default_max_tokens;
  auto& candidates = entry->second.candidates;

  bool any_usable = false;
  std::vector<Gate> gates(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) {
    gates[i] = GateOf(candidates[i], now);
    any_usable = any_usable || candidates[i].key->usable;
  }

  // nginx's smooth weighted round-robin: every eligible candidate gains its
  // weight, the largest wins and pays back the total. Over any window of
  // `total` picks each key gets exactly its weight.
  Candidate* best = nullptr;
  int64_t total = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (gates[i] == Gate::kBlocked) continue;
    auto& c = candidates[i];
    c.current += c.key->weight;
    total += c.key->weight;
    if (best == nullptr || c.current > best->current) best = &c;
  }
  if (best == nullptr) {
    result.status =
        any_usable ? RouteResult::Status::kNoHealthyUpstream : RouteResult::Status::kNoRoute;
    return result;
  }
  best->current -= total;
  result.attempts.push_back(AttemptFor(*best));
  if (gates[best - candidates.data()] == Gate::kTrial) {
    // The one trial of each half-open scope (the key's, the model's, or both).
    for (Breaker* b : {&best->key->key_wide, best->model}) {
      if (GateOf(*b, now) != Gate::kTrial) continue;
      b->trial_in_flight = true;
      b->trial_deadline = now + options_.trial_timeout;
    }
    result.attempts.back().trial = true;
  }

  // Failover order: the picks the round-robin would make next among the other
  // healthy keys, simulated on a copy so that unused fallbacks do not skew the
  // rotation. Half-open keys are left out: their one trial goes first or not at all.
  std::vector<std::pair<Candidate*, int64_t>> rest;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (gates[i] == Gate::kHealthy && &candidates[i] != best)
      rest.emplace_back(&candidates[i], candidates[i].current);
  while (static_cast<int>(result.attempts.size()) < limit && !rest.empty()) {
    int64_t rest_total = 0;
    size_t pick = 0;
    for (size_t i = 0; i < rest.size(); ++i) {
      rest[i].second += rest[i].first->key->weight;
      rest_total += rest[i].first->key->weight;
      if (rest[i].second > rest[pick].second) pick = i;
    }
    rest[pick].second -= rest_total;
    result.attempts.push_back(AttemptFor(*rest[pick].first));
    rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(pick));
  }
  return result;
}

namespace {

// Applies one verdict to one scope's breaker (a KeyPool::Breaker). Returns
// whether it counted as a failure.
template <typename Breaker>
bool Apply(Breaker& b, Verdict verdict, Clock::SteadyTime now, const KeyPoolOptions& options) {
  const bool half_open = b.open && now >= b.open_until;
  auto close = [&] {
    b.open = false;
    b.trial_in_flight = false;
    b.consecutive_failures = 0;
  };
  switch (verdict) {
    case Verdict::kSuccess:
      close();
      return false;
    case Verdict::kAnswered:
      if (half_open) close();
      return false;
    case Verdict::kFailure:
      ++b.consecutive_failures;
      // An open breaker is not extended by late reports of requests routed
      // before it opened; a failure once half-open is the trial failing.
      if (half_open || (!b.open && b.consecutive_failures >= options.failure_threshold)) {
        b.open = true;
        b.open_until = now + options.breaker_cooldown;
        b.trial_in_flight = false;
      }
      return true;
    case Verdict::kNothing:
      // The trial (if this was it) decided nothing: the next plan gets another.
      if (half_open) b.trial_in_flight = false;
      return false;
  }
  return false;
}

}  // namespace

bool KeyPool::Report(const Outcome& outcome) {
  if (outcome.kind == OutcomeKind::kUnspecified) return false;
  const auto now = clock_.SteadyNow();
  std::lock_guard lock(mu_);
  auto it = keys_.find(outcome.key_id);
  if (it == keys_.end()) return false;
  KeyState& k = it->second;
  auto cool_down = [&](Breaker& b) {
    auto cooldown =
        outcome.retry_after_ms > 0
            ? std::min(std::chrono::milliseconds(outcome.retry_after_ms), kMaxRateLimitCooldown)
            : options_.rate_limit_cooldown;
    b.rate_limited_until = std::max(b.rate_limited_until, now + cooldown);
  };
  const bool rate_limited = outcome.kind == OutcomeKind::kRateLimited;

  ++k.key_wide.requests;
  if (outcome.upstream_model.empty()) {
    // A reporter that does not say which model: the key answers for everything.
    if (Apply(k.key_wide, ForKeyOnly(outcome.kind), now, options_)) ++k.key_wide.failures;
    if (rate_limited) cool_down(k.key_wide);
    return true;
  }
  bool failed = false;
  // A model the key no longer serves (its route removed since the plan) keeps no state.
  if (auto model = k.models.find(outcome.upstream_model); model != k.models.end()) {
    Breaker& m = model->second;
    ++m.requests;
    if (Apply(m, ForModel(outcome.kind), now, options_)) {
      ++m.failures;
      failed = true;
    }
    if (rate_limited) cool_down(m);
  }
  failed = Apply(k.key_wide, ForKey(outcome.kind), now, options_) || failed;
  // The key's own count is every failing outcome, whichever scope it hit.
  if (failed) ++k.key_wide.failures;
  return true;
}

KeyHealth KeyPool::HealthOf(int64_t id, const KeyState& k, Clock::SteadyTime now) const {
  auto state = [&](const Breaker& b) {
    return !b.open ? BreakerState::kClosed
                   : (now < b.open_until ? BreakerState::kOpen : BreakerState::kHalfOpen);
  };
  auto breaker_remaining = [&](const Breaker& b) {
    return b.open ? Remaining(b.open_until, now) : std::chrono::milliseconds(0);
  };
  auto trial_in_flight = [&](const Breaker& b) {
    return b.open && b.trial_in_flight && now < b.trial_deadline;
  };
  KeyHealth h;
  h.key_id = id;
  h.state = state(k.key_wide);
  h.consecutive_failures = k.key_wide.consecutive_failures;
  h.breaker_remaining = breaker_remaining(k.key_wide);
  h.rate_limit_remaining = Remaining(k.key_wide.rate_limited_until, now);
  h.trial_in_flight = trial_in_flight(k.key_wide);
  h.requests = k.key_wide.requests;
  h.failures = k.key_wide.failures;
  h.models.reserve(k.models.size());
  for (const auto& [name, b] : k.models) {
    ModelHealth m;
    m.upstream_model = name;
    m.state = state(b);
    m.consecutive_failures = b.consecutive_failures;
    m.breaker_remaining = breaker_remaining(b);
    m.rate_limit_remaining = Remaining(b.rate_limited_until, now);
    m.trial_in_flight = trial_in_flight(b);
    m.requests = b.requests;
    m.failures = b.failures;
    h.models.push_back(std::move(m));
  }
  return h;
}

std::optional<KeyHealth> KeyPool::Health(int64_t key_id) const {
  const auto now = clock_.SteadyNow();
  std::lock_guard lock(mu_);
  auto it = keys_.find(key_id);
  if (it == keys_.end()) return std::nullopt;
  return HealthOf(key_id, it->second, now);
}

std::vector<KeyHealth> KeyPool::Health() const {
  const auto now = clock_.SteadyNow();
  std::vector<KeyHealth> out;
  {
    std::lock_guard lock(mu_);
    out.reserve(keys_.size());
    for (const auto& [id, k] : keys_) out.push_back(HealthOf(id, k, now));
  }
  std::sort(out.begin(), out.end(),
            [](const KeyHealth& a, const KeyHealth& b) { return a.key_id < b.key_id; });
  return out;
}

std::vector<ModelInfo> KeyPool::ListModels() const {
  std::vector<ModelInfo> out;
  std::lock_guard lock(mu_);
  for (const auto& [name, entry] : models_)
    out.push_back({name, entry.record.created, entry.record.owned_by});
  for (const auto& [alias, model] : aliases_) {
    const auto& record = models_.find(model)->second.record;
    out.push_back({alias, record.created, record.owned_by});
  }
  std::sort(out.begin(), out.end(),
            [](const ModelInfo& a, const ModelInfo& b) { return a.id < b.id; });
  return out;
}

}  // namespace tollgate::router
