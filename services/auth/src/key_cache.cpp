#include "tollgate/auth/key_cache.h"

#include "tollgate/log.h"

namespace tollgate::auth {

KeyPrincipal PrincipalOf(const ApiKeyRecord& key) {
  KeyPrincipal p;
  p.key_id = key.id;
  p.user_id = key.user_id;
  p.key_name = key.name;
  p.status = key.status;
  p.user_status = key.user_status;
  p.expires_at = key.expires_at;
  p.allowed_models = key.allowed_models;
  p.allowed_cidrs = key.allowed_cidrs;
  p.limits_ref = key.limits_ref;
  p.store_bodies = key.store_bodies;
  p.version = key.version;
  auto bad = ParseNetworks(p);
  if (!bad.empty())
    // The database's cidr type makes this unreachable; if it happens, the key fails closed.
    log::Error("auth", "a key's allowed_cidrs do not parse; those entries match nobody",
               {{"api_key_id", key.id}});
  return p;
}

std::optional<KeyPrincipal> KeyCache::Find(std::string_view key_hash) const {
  std::shared_lock lock(mu_);
  auto it = by_hash_.find(std::string(key_hash));
  // Found by hash (a timing difference could reveal something about a hash, never about the
  // key); the explicit constant-time comparison is what accepts it.
  if (it == by_hash_.end() || !SecureEquals(it->first, key_hash)) return std::nullopt;
  return it->second;
}

size_t KeyCache::size() const {
  std::shared_lock lock(mu_);
  return by_hash_.size();
}

std::vector<KeyChange> KeyCache::Apply(const std::vector<ApiKeyRecord>& records) {
  std::lock_guard apply(apply_mu_);
  std::vector<KeyChange> changed;
  {
    std::unique_lock lock(mu_);
    for (const auto& record : records) {
      auto it = by_hash_.find(record.key_hash);
      if (it != by_hash_.end() && it->second.version >= record.version) continue;
      KeyPrincipal principal = PrincipalOf(record);
      by_hash_[record.key_hash] = principal;
      changed.push_back({record.key_hash, std::move(principal)});
    }
  }
  if (!changed.empty()) {
    std::lock_guard lock(listeners_mu_);
    for (auto& [id, listener] : listeners_) listener(changed);
  }
  return changed;
}

int64_t KeyCache::Subscribe(Listener listener) {
  std::lock_guard lock(listeners_mu_);
  int64_t id = next_listener_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void KeyCache::Unsubscribe(int64_t id) {
  std::lock_guard lock(listeners_mu_);
  listeners_.erase(id);
}

void LastUsedRecorder::Record(int64_t key_id, int64_t unix_s) {
  std::lock_guard lock(mu_);
  auto& at = pending_[key_id];
  if (unix_s > at) at = unix_s;
}

void LastUsedRecorder::Flush() {
  std::lock_guard flush(flush_mu_);
  std::map<int64_t, int64_t> batch;
  {
    std::lock_guard lock(mu_);
    batch.swap(pending_);
  }
  if (batch.empty()) return;
  try {
    repo_.RecordLastUsed(batch);
  } catch (...) {
    // Keep it for the next flush (newer uses recorded meanwhile win).
    std::lock_guard lock(mu_);
    for (const auto& [id, at] : batch) {
      auto& cur = pending_[id];
      if (at > cur) cur = at;
    }
    throw;
  }
}

LastUsedRecorder::~LastUsedRecorder() { Stop(); }

void LastUsedRecorder::Start(std::chrono::milliseconds interval) {
  Stop();
  thread_.Every(interval, [this, failing = false]() mutable {
    try {
      Flush();
      failing = false;
    } catch (const std::exception& e) {
      if (!failing)
        log::Warn("auth", "writing last-used times failed; keeping them for the next try",
                  {{"error", log::Redact(e.what())}});
      failing = true;
    }
  });
}

void LastUsedRecorder::Stop() {
  if (!thread_.running()) return;
  thread_.Stop();
  try {
    Flush();
  } catch (const std::exception& e) {
    log::Warn("auth", "last-used times lost at shutdown", {{"error", log::Redact(e.what())}});
  }
}

size_t LastUsedRecorder::pending() const {
  std::lock_guard lock(mu_);
  return pending_.size();
}

AuthDecision Authenticator::Authenticate(std::string_view key_hash,
                                         std::string_view client_ip) const {
  AuthDecision decision;
  auto principal = cache_.Find(key_hash);
  if (!principal) return decision;
  decision.verdict = Evaluate(*principal, client_ip, clock_.UnixSeconds());
  if (decision.verdict == Verdict::kOk) recorder_.Record(principal->key_id, clock_.UnixSeconds());
  decision.principal = std::move(principal);
  return decision;
}

}  // namespace tollgate::auth
