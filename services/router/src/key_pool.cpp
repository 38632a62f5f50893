#include "tollgate/router/key_pool.h"

#include <algorithm>

namespace tollgate::router {
namespace {

// A retry-after longer than this is treated as this: a key must come back
// eventually even if an upstream asks for days.
constexpr std::chrono::milliseconds kMaxRateLimitCooldown = std::chrono::hours(1);
// Plans longer than this are never useful and only cost decryption copies.
constexpr int kMaxAttemptsCap = 16;

bool CountsAsFailure(OutcomeKind kind) {
  return kind == OutcomeKind::kConnectError || kind == OutcomeKind::kTimeout ||
         kind == OutcomeKind::kServerError || kind == OutcomeKind::kAuthError;
}

std::chrono::milliseconds Remaining(Clock::TimePoint until, Clock::TimePoint now) {
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
  for (auto& [id, state] : fresh) {
    auto old = keys_.find(id);
    if (old == keys_.end() || old->second.nonce != state.nonce) continue;
    const KeyState& o = old->second;
    state.consecutive_failures = o.consecutive_failures;
    state.open = o.open;
    state.open_until = o.open_until;
    state.trial_in_flight = o.trial_in_flight;
    state.trial_deadline = o.trial_deadline;
    state.rate_limited_until = o.rate_limited_until;
    state.requests = o.requests;
    state.failures = o.failures;
  }
  std::map<std::string, ModelEntry, std::less<>> models;
  for (const auto& m : catalogue.models) models[m.name].record = m;
  for (const auto& r : catalogue.routes) {
    auto model = models.find(r.model);
    auto provider = providers.find(r.provider_id);
    if (model == models.end() || provider == providers.end()) continue;
    for (int64_t key_id : keys_by_provider[r.provider_id]) {
      Candidate c;
      c.key = &fresh.at(key_id);
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

KeyPool::Gate KeyPool::GateOf(const KeyState& key, Clock::TimePoint now) const {
  if (!key.usable || now < key.rate_limited_until) return Gate::kBlocked;
  if (!key.open) return Gate::kHealthy;
  if (now < key.open_until) return Gate::kBlocked;
  if (key.trial_in_flight && now < key.trial_deadline) return Gate::kBlocked;
  return Gate::kTrial;
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

RouteResult KeyPool::Route(std::string_view model, int max_attempts) {
  RouteResult result;
  int limit = max_attempts > 0 ? max_attempts : options_.max_attempts;
  limit = std::clamp(limit, 1, kMaxAttemptsCap);
  const auto now = clock_.Now();

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

  std::vector<Gate> gates(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) gates[i] = GateOf(*candidates[i].key, now);

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
    result.status = RouteResult::Status::kNoHealthyUpstream;
    return result;
  }
  best->current -= total;
  result.attempts.push_back(AttemptFor(*best));
  if (gates[best - candidates.data()] == Gate::kTrial) {
    best->key->trial_in_flight = true;
    best->key->trial_deadline = now + options_.trial_timeout;
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

bool KeyPool::Report(const Outcome& outcome) {
  if (outcome.kind == OutcomeKind::kUnspecified) return false;
  const auto now = clock_.Now();
  std::lock_guard lock(mu_);
  auto it = keys_.find(outcome.key_id);
  if (it == keys_.end()) return false;
  KeyState& k = it->second;
  ++k.requests;
  const bool half_open = k.open && now >= k.open_until;
  auto close = [&] {
    k.open = false;
    k.trial_in_flight = false;
    k.consecutive_failures = 0;
  };
  if (outcome.kind == OutcomeKind::kSuccess) {
    close();
  } else if (CountsAsFailure(outcome.kind)) {
    ++k.failures;
    ++k.consecutive_failures;
    // An open breaker is not extended by late reports of requests routed
    // before it opened; a failure once half-open is the trial failing.
    if (half_open || (!k.open && k.consecutive_failures >= options_.failure_threshold)) {
      k.open = true;
      k.open_until = now + options_.breaker_cooldown;
      k.trial_in_flight = false;
    }
  } else if (outcome.kind == OutcomeKind::kRateLimited) {
    auto cooldown =
        outcome.retry_after_ms > 0
            ? std::min(std::chrono::milliseconds(outcome.retry_after_ms), kMaxRateLimitCooldown)
            : options_.rate_limit_cooldown;
    k.rate_limited_until = std::max(k.rate_limited_until, now + cooldown);
    // The key authenticated and the upstream answered: a trial has passed.
    if (half_open) close();
  } else if (outcome.kind == OutcomeKind::kClientError) {
    if (half_open) close();
  }
  return true;
}

KeyHealth KeyPool::HealthOf(int64_t id, const KeyState& k, Clock::TimePoint now) const {
  KeyHealth h;
  h.key_id = id;
  h.state = !k.open ? BreakerState::kClosed
                    : (now < k.open_until ? BreakerState::kOpen : BreakerState::kHalfOpen);
  h.consecutive_failures = k.consecutive_failures;
  h.breaker_remaining = k.open ? Remaining(k.open_until, now) : std::chrono::milliseconds(0);
  h.rate_limit_remaining = Remaining(k.rate_limited_until, now);
  h.trial_in_flight = k.open && k.trial_in_flight && now < k.trial_deadline;
  h.requests = k.requests;
  h.failures = k.failures;
  return h;
}

std::optional<KeyHealth> KeyPool::Health(int64_t key_id) const {
  const auto now = clock_.Now();
  std::lock_guard lock(mu_);
  auto it = keys_.find(key_id);
  if (it == keys_.end()) return std::nullopt;
  return HealthOf(key_id, it->second, now);
}

std::vector<KeyHealth> KeyPool::Health() const {
  const auto now = clock_.Now();
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
