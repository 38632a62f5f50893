#include "tollgate/billing/hold_book.h"

#include <algorithm>

namespace tollgate::billing {

HoldBook::HoldBook() : rng_(std::random_device{}()) {}

int64_t HoldBook::NewHoldId(int64_t user_id) {
  // Random (unique across replicas and restarts, so a record names one hold), positive, with the
  // user's shard in the low bits.
  uint64_t r;
  {
    std::lock_guard lock(rng_mu_);
    r = rng_();
  }
  const uint64_t shard = static_cast<uint64_t>(user_id) % kShards;
  uint64_t id = ((r >> 8) / kShards) * kShards + shard;  // < 2^56
  return static_cast<int64_t>(id == 0 ? kShards : id);
}

void HoldBook::Drop(Shard& shard, User& user, std::map<int64_t, Hold>::iterator it) {
  user.held_micros -= it->second.amount_micros;
  if (!it->second.request_id.empty()) {
    RequestShard& r = ShardOfRequest(it->second.request_id);
    std::lock_guard lock(r.mu);
    r.holds.erase(it->second.request_id);
  }
  shard.hold_user.erase(it->first);
  user.holds.erase(it);
}

void HoldBook::ExpireUser(Shard& shard, User& user, int64_t now_ms, int64_t* expired) {
  for (auto it = user.holds.begin(); it != user.holds.end();) {
    auto next = std::next(it);
    if (it->second.expires_at_ms <= now_ms) {
      Drop(shard, user, it);
      if (expired) ++*expired;
    }
    it = next;
  }
}

bool HoldBook::NeedsLoad(int64_t user_id) {
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  auto it = shard.users.find(user_id);
  return it == shard.users.end() || !it->second.loaded;
}

std::optional<BookHold> HoldBook::Place(int64_t user_id, const std::string& request_id,
                                        int64_t amount_micros, int64_t now_ms,
                                        int64_t expires_at_ms) {
  // Lock order: the user's shard, then the request id's shard (as Drop does).
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  auto u = shard.users.find(user_id);
  User* user = u != shard.users.end() && u->second.loaded ? &u->second : nullptr;
  if (user) {
    user->last_used_ms = now_ms;
    ExpireUser(shard, *user, now_ms, nullptr);  // expired holds stop counting at once
  }
  BookHold out;
  // The same request asking again (its first call timed out) gets its hold back; another user
  // cannot reuse a request id (nor learn the hold). Locked from the check to the insert, so two
  // calls for one request never both place a hold.
  std::unique_lock<std::mutex> request_lock;
  RequestShard* requests = nullptr;
  if (!request_id.empty()) {
    requests = &ShardOfRequest(request_id);
    request_lock = std::unique_lock(requests->mu);
    if (auto it = requests->holds.find(request_id); it != requests->holds.end()) {
      out.request_id_taken = it->second.second != user_id;
      out.granted = !out.request_id_taken;
      out.hold_id = out.granted ? it->second.first : 0;
      return out;
    }
  }
  if (!user) return std::nullopt;
  out.available_micros = user->balance_micros + user->credit_limit_micros - user->held_micros;
  if (amount_micros > out.available_micros) return out;
  out.granted = true;
  out.hold_id = NewHoldId(user_id);
  user->holds[out.hold_id] = Hold{user_id, amount_micros, expires_at_ms, request_id};
  user->held_micros += amount_micros;
  shard.hold_user[out.hold_id] = user_id;
  if (requests) requests->holds[request_id] = {out.hold_id, user_id};
  return out;
}

void HoldBook::Load(const std::vector<AccountState>& accounts) {
  for (const AccountState& a : accounts) {
    Shard& shard = ShardOf(a.user_id);
    std::lock_guard lock(shard.mu);
    User& user = shard.users[a.user_id];
    // Charges this replica applied after the version read are not in the row yet.
    int64_t later = 0;
    for (auto it = user.charges.upper_bound(a.version); it != user.charges.end(); ++it)
      later += it->second;
    user.charges.erase(user.charges.begin(), user.charges.upper_bound(a.version));
    user.loaded = true;
    user.balance_micros = (a.exists ? a.balance_micros : 0) - later;
    user.credit_limit_micros = a.exists ? a.credit_limit_micros : 0;
    user.version = std::max(user.version, a.version);
  }
}

void HoldBook::Invalidate(int64_t user_id) {
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  if (auto it = shard.users.find(user_id); it != shard.users.end()) it->second.loaded = false;
}

void HoldBook::Release(int64_t hold_id) {
  if (hold_id <= 0) return;
  Shard& shard = ShardOfHold(hold_id);
  std::lock_guard lock(shard.mu);
  auto h = shard.hold_user.find(hold_id);
  if (h == shard.hold_user.end()) return;
  User& user = shard.users[h->second];
  if (auto it = user.holds.find(hold_id); it != user.holds.end()) Drop(shard, user, it);
}

void HoldBook::Settle(const std::vector<Settlement>& settled) {
  for (const Settlement& s : settled) {
    Shard& shard = ShardOf(s.user_id);
    std::lock_guard lock(shard.mu);
    User& user = shard.users[s.user_id];
    if (s.hold_id > 0)
      if (auto it = user.holds.find(s.hold_id); it != user.holds.end()) Drop(shard, user, it);
    // A charge the last load already read (its version is not newer) is in the balance.
    if (s.cost_micros != 0 && s.version > user.version) {
      user.balance_micros -= s.cost_micros;
      user.charges[s.version] += s.cost_micros;  // one version per account per batch
      if (user.charges.size() > 100000) user.charges.erase(user.charges.begin());
    }
  }
}

void HoldBook::Forget(const std::vector<int64_t>& hold_ids) {
  for (int64_t id : hold_ids) Release(id);
}

int64_t HoldBook::Expire(int64_t now_ms, int64_t idle_after_ms) {
  int64_t expired = 0;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (auto it = shard.users.begin(); it != shard.users.end();) {
      ExpireUser(shard, it->second, now_ms, &expired);
      // An idle user without holds is forgotten; its next hold loads the account again.
      if (it->second.holds.empty() && now_ms - it->second.last_used_ms > idle_after_ms)
        it = shard.users.erase(it);
      else
        ++it;
    }
  }
  return expired;
}

int64_t HoldBook::HeldMicros(int64_t user_id, int64_t now_ms) {
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  auto it = shard.users.find(user_id);
  if (it == shard.users.end()) return 0;
  ExpireUser(shard, it->second, now_ms, nullptr);
  return it->second.held_micros;
}

std::optional<int64_t> HoldBook::Available(int64_t user_id, int64_t now_ms) {
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  auto it = shard.users.find(user_id);
  if (it == shard.users.end() || !it->second.loaded) return std::nullopt;
  ExpireUser(shard, it->second, now_ms, nullptr);
  const User& u = it->second;
  return u.balance_micros + u.credit_limit_micros - u.held_micros;
}

std::vector<int64_t> HoldBook::Users() {
  std::vector<int64_t> out;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (const auto& [id, user] : shard.users)
      if (user.loaded) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<int64_t> HoldBook::LiveHoldIds() {
  std::vector<int64_t> out;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (const auto& [id, user] : shard.hold_user) out.push_back(id);
  }
  return out;
}

int64_t HoldBook::live_holds() {
  int64_t n = 0;
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    n += static_cast<int64_t>(shard.hold_user.size());
  }
  return n;
}

}  // namespace tollgate::billing
