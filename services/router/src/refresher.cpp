#include "tollgate/router/refresher.h"

#include <random>
#include <string>

#include "tollgate/log.h"

namespace tollgate::router {

CatalogueRefresher::CatalogueRefresher(RouterRepository& repo, KeyPool& pool, SecretOpener open)
    : repo_(repo), pool_(pool), open_(std::move(open)) {}

CatalogueRefresher::~CatalogueRefresher() { Stop(); }

void CatalogueRefresher::Reload() {
  std::lock_guard lock(reload_mu_);
  Catalogue catalogue = repo_.LoadCatalogue();
  if (last_ && *last_ == catalogue) return;
  auto unreadable = pool_.Replace(catalogue, open_);
  if (!unreadable.empty()) {
    // Ids only: nothing about the secret itself goes to the log.
    std::string ids;
    for (int64_t id : unreadable) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    log::Error("router",
               "upstream keys cannot be decrypted with router.master_key; they are out of "
               "rotation (was the master key changed?)",
               {{"key_ids", ids}});
  }
  log::Debug("router", "catalogue loaded",
             {{"providers", catalogue.providers.size()},
              {"keys", catalogue.keys.size()},
              {"models", catalogue.models.size()}});
  {
    std::lock_guard lock(snapshot_mu_);
    if (snapshot_.version == 0) {
      std::random_device rd;
      snapshot_.version =
          static_cast<int64_t>((uint64_t{rd()} << 20 | rd()) & ((1ull << 52) - 1)) + 1;
    } else {
      ++snapshot_.version;
    }
    snapshot_.catalogue = std::make_shared<const Catalogue>(catalogue);
  }
  last_ = std::move(catalogue);
}

CatalogueRefresher::Snapshot CatalogueRefresher::Current() const {
  std::lock_guard lock(snapshot_mu_);
  return snapshot_;
}

void CatalogueRefresher::Start(std::chrono::milliseconds interval,
                               std::function<void()> after_each) {
  thread_.Start([this, interval, after_each = std::move(after_each)](std::stop_token stop) {
    Loop(stop, interval, after_each);
  });
}

void CatalogueRefresher::Stop() { thread_.Stop(); }

void CatalogueRefresher::Loop(std::stop_token stop, std::chrono::milliseconds interval,
                              const std::function<void()>& after_each) {
  bool failing = false;
  while (thread_.SleepFor(stop, interval)) {
    try {
      Reload();
      if (failing) log::Info("router", "catalogue reload recovered");
      failing = false;
    } catch (const std::exception& e) {
      // Route keeps answering from the last snapshot; say so once, not every second.
      if (!failing)
        log::Warn("router", "catalogue reload failed; serving the last snapshot",
                  {{"error", log::Redact(e.what())}});
      failing = true;
    }
    if (after_each) after_each();
  }
}

}  // namespace tollgate::router
