// The auth service's in-memory view of every key (key hash → principal), so Authenticate
// costs no query. It is loaded whole at start, updated by admin changes on this replica and by
// the periodic refresh (changes made on other replicas), and tells its subscribers (the
// WatchKeys streams) about every change.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tollgate/auth/policy.h"
#include "tollgate/auth/repository.h"
#include "tollgate/background_thread.h"
#include "tollgate/clock.h"

namespace tollgate::auth {

// The principal a stored key stands for.
KeyPrincipal PrincipalOf(const ApiKeyRecord& key);

struct KeyChange {
  std::string key_hash;
  KeyPrincipal principal;
};

class KeyCache final {
 public:
  std::optional<KeyPrincipal> Find(std::string_view key_hash) const;
  size_t size() const;

  // Takes each record whose version is newer than the one held (or that is new); returns what
  // changed, after handing it to every subscriber.
  std::vector<KeyChange> Apply(const std::vector<ApiKeyRecord>& records);

  // Subscribers see every batch of changes, in order, on the thread that applied it: they
  // must only queue it. After Unsubscribe returns, the listener is not running and never will.
  using Listener = std::function<void(const std::vector<KeyChange>&)>;
  int64_t Subscribe(Listener listener);
  void Unsubscribe(int64_t id);

 private:
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, KeyPrincipal> by_hash_;
  std::mutex apply_mu_;  // one Apply at a time, so subscribers see changes in order
  std::mutex listeners_mu_;
  std::map<int64_t, Listener> listeners_;
  int64_t next_listener_ = 1;
};

// Collects when keys were used and writes it in batches (one UPDATE per flush), never per
// request.
class LastUsedRecorder final {
 public:
  explicit LastUsedRecorder(AuthRepository& repo) : repo_(repo) {}
  ~LastUsedRecorder();
  void Record(int64_t key_id, int64_t unix_s);
  // Writes what was collected; on failure keeps it for the next flush. Throws what the
  // repository threw.
  void Flush();
  size_t pending() const;

  // Flushes every `interval` on a background thread; Stop() flushes once more.
  void Start(std::chrono::milliseconds interval);
  void Stop();

 private:
  AuthRepository& repo_;
  mutable std::mutex mu_;
  std::map<int64_t, int64_t> pending_;
  std::mutex flush_mu_;
  BackgroundThread thread_;  // last: stopped before the members its loop uses
};

struct AuthDecision {
  Verdict verdict = Verdict::kUnknownKey;
  std::optional<KeyPrincipal> principal;  // for every known key
};

// Authenticate's logic: look the hash up, confirm it in constant time, decide.
class Authenticator final {
 public:
  Authenticator(const KeyCache& cache, const Clock& clock, LastUsedRecorder& recorder)
      : cache_(cache), clock_(clock), recorder_(recorder) {}
  // `key_hash` is the SHA-256 of the key (32 bytes).
  AuthDecision Authenticate(std::string_view key_hash, std::string_view client_ip) const;

 private:
  const KeyCache& cache_;
  const Clock& clock_;
  LastUsedRecorder& recorder_;
};

}  // namespace tollgate::auth
