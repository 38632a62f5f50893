#include "tollgate/auth/refresher.h"

#include "tollgate/log.h"

namespace tollgate::auth {

KeyRefresher::~KeyRefresher() { Stop(); }

void KeyRefresher::ReloadAll() {
  std::lock_guard lock(reload_mu_);
  Load(std::nullopt);
}

void KeyRefresher::ReloadChanged() {
  std::lock_guard lock(reload_mu_);
  const int64_t overlap_us = std::chrono::microseconds(kOverlap).count();
  Load(since_us_ ? std::optional<int64_t>(*since_us_ - overlap_us) : std::nullopt);
}

void KeyRefresher::Load(std::optional<int64_t> since_us) {
  KeyLoad load = repo_.LoadKeys(since_us);
  auto changed = cache_.Apply(load.keys);
  since_us_ = load.db_now_us;
  if (!since_us || !changed.empty())
    log::Debug("auth", since_us ? "key changes loaded" : "keys loaded",
               {{"rows", load.keys.size()}, {"changed", changed.size()}});
}

void KeyRefresher::Start(std::chrono::milliseconds interval,
                         std::chrono::milliseconds full_interval,
                         std::function<void()> after_each) {
  thread_.Start([this, interval, full_interval, after_each = std::move(after_each)](
                    std::stop_token stop) { Loop(stop, interval, full_interval, after_each); });
}

void KeyRefresher::Stop() { thread_.Stop(); }

void KeyRefresher::Loop(std::stop_token stop, std::chrono::milliseconds interval,
                        std::chrono::milliseconds full_interval,
                        const std::function<void()>& after_each) {
  bool failing = false;
  auto last_full = std::chrono::steady_clock::now();
  while (thread_.SleepFor(stop, interval)) {
    try {
      auto now = std::chrono::steady_clock::now();
      if (now - last_full >= full_interval) {
        ReloadAll();
        last_full = now;
      } else {
        ReloadChanged();
      }
      if (failing) log::Info("auth", "key reload recovered");
      failing = false;
    } catch (const std::exception& e) {
      // Authenticate keeps answering from the cache; say so once, not every second.
      if (!failing)
        log::Warn("auth", "key reload failed; serving the cached keys",
                  {{"error", log::Redact(e.what())}});
      failing = true;
    }
    if (after_each) after_each();
  }
}

}  // namespace tollgate::auth
