// Keeps the key cache in step with the database: everything at start, then every interval the
// keys changed since the last load (with an overlap, so a transaction that committed late is
// still seen), and everything again every full-reload interval.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>

#include "tollgate/auth/key_cache.h"
#include "tollgate/auth/repository.h"
#include "tollgate/background_thread.h"

namespace tollgate::auth {

class KeyRefresher final {
 public:
  // How far back each incremental load looks before the previous one's snapshot time.
  static constexpr std::chrono::seconds kOverlap{10};

  KeyRefresher(AuthRepository& repo, KeyCache& cache) : repo_(repo), cache_(cache) {}
  ~KeyRefresher();
  KeyRefresher(const KeyRefresher&) = delete;
  KeyRefresher& operator=(const KeyRefresher&) = delete;

  // Throws when the database cannot be read; the cache then keeps what it has.
  void ReloadAll();
  void ReloadChanged();

  void Start(std::chrono::milliseconds interval, std::chrono::milliseconds full_interval,
             std::function<void()> after_each = {});
  void Stop();

 private:
  void Load(std::optional<int64_t> since_us);  // under reload_mu_
  void Loop(std::stop_token stop, std::chrono::milliseconds interval,
            std::chrono::milliseconds full_interval, const std::function<void()>& after_each);

  AuthRepository& repo_;
  KeyCache& cache_;
  std::mutex reload_mu_;
  std::optional<int64_t> since_us_;

  BackgroundThread thread_;  // last: stopped before the members its loop uses
};

}  // namespace tollgate::auth
