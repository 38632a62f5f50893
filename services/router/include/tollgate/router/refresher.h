// Keeps the key pool's snapshot in step with the database: on demand (after an
// admin change on this replica) and periodically (changes made on another one).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>

#include "tollgate/background_thread.h"
#include "tollgate/router/catalogue.h"
#include "tollgate/router/key_pool.h"
#include "tollgate/router/repository.h"

namespace tollgate::router {

class CatalogueRefresher final {
 public:
  CatalogueRefresher(RouterRepository& repo, KeyPool& pool, SecretOpener open);
  ~CatalogueRefresher();
  CatalogueRefresher(const CatalogueRefresher&) = delete;
  CatalogueRefresher& operator=(const CatalogueRefresher&) = delete;

  // Loads the catalogue and hands it to the pool (skipped when nothing
  // changed). Throws when the database cannot be read; the pool then keeps
  // its last snapshot.
  void Reload();

  // Reloads every `interval` on a background thread until Stop(). Failures
  // are logged; `after_each` runs after every attempt (metrics).
  void Start(std::chrono::milliseconds interval, std::function<void()> after_each = {});
  void Stop();

  // The catalogue the pool was last built from, and its version (random per process, then +1 on
  // every change), for edges that route locally (GetRoutingTable). Null before the first Reload.
  struct Snapshot {
    int64_t version = 0;
    std::shared_ptr<const Catalogue> catalogue;
  };
  Snapshot Current() const;

 private:
  void Loop(std::stop_token stop, std::chrono::milliseconds interval,
            const std::function<void()>& after_each);

  RouterRepository& repo_;
  KeyPool& pool_;
  SecretOpener open_;
  std::mutex reload_mu_;  // one reload at a time, so an older read never lands last
  std::optional<Catalogue> last_;
  mutable std::mutex snapshot_mu_;
  Snapshot snapshot_;

  BackgroundThread thread_;  // last: stopped before the members its loop uses
};

}  // namespace tollgate::router
