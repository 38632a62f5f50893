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
  user.by_expiry.erase(it->second.expiry);
  user.holds.erase(it);
}

void HoldBook::ExpireUser(Shard& shard, User& user, int64_t now_ms, int64_t* expired) {
  // Earliest expiry first: only the holds that expired are visited.
  while (!user.by_expiry.empty() && user.by_expiry.begin()->first <= now_ms) {
    auto it = user.holds.find(user.by_expiry.begin()->second);
    if (it == user.holds.end()) {  // cannot happen: the index follows the holds
      user.by_expiry.erase(user.by_expiry.begin());
      continue;
    }
    Drop(shard, user, it);
    if (expired) ++*expired;
  }
}

void HoldBook::Shrink(Shard& shard, User& user, std::map<int64_t, Hold>::iterator it, int64_t by) {
  const int64_t cut = std::clamp<int64_t>(by, 0, it->second.amount_micros);
  it->second.amount_micros -= cut;
  user.held_micros -= cut;
  if (it->second.returned && it->second.amount_micros == 0) Drop(shard, user, it);
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
  Hold& hold = user->holds[out.hold_id];
  hold = Hold{user_id, amount_micros, expires_at_ms, request_id};
  hold.expiry = user->by_expiry.emplace(expires_at_ms, out.hold_id);
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

std::optional<BookBudget> HoldBook::PlaceBudget(int64_t user_id, int64_t budget_id,
                                                int64_t want_micros, int64_t min_micros,
                                                const BudgetSizing& sizing, int64_t now_ms,
                                                int64_t expires_at_ms, int64_t left_micros) {
  Shard& shard = ShardOf(user_id);
  std::lock_guard lock(shard.mu);
  auto u = shard.users.find(user_id);
  if (u == shard.users.end() || !u->second.loaded) return std::nullopt;
  User& user = u->second;
  user.last_used_ms = now_ms;
  ExpireUser(shard, user, now_ms, nullptr);
  BookBudget out;
  std::map<int64_t, Hold>::iterator it = user.holds.end();
  if (budget_id != 0) {
    it = user.holds.find(budget_id);
    if (it == user.holds.end() || !it->second.budget || it->second.returned) {
      out.found = false;  // expired, returned, or granted by an earlier incarnation
      return out;
    }
  }
  const int64_t headroom = user.balance_micros + user.credit_limit_micros - user.held_micros;
  // Held for it and not spent yet at the edge (what it spent and billing has not charged yet
  // stays held, but is no longer the edge's to spend).
  const int64_t held_for = it == user.holds.end() ? 0 : it->second.amount_micros;
  const int64_t amount = left_micros < 0 ? held_for : std::min(left_micros, held_for);
  int64_t add = 0;
  if (headroom >= sizing.min_headroom_micros && headroom > 0) {
    // The budget, this grant included, is at most a share of the headroom it was granted from
    // (what is free plus what the budget already holds).
    const int64_t cap = (headroom + amount) / std::max<int64_t>(sizing.share_divisor, 1) - amount;
    add = std::clamp<int64_t>(want_micros, 0, std::max<int64_t>(cap, 0));
    if (add < std::max<int64_t>(min_micros, 1)) add = 0;
  }
  if (it == user.holds.end()) {
    if (add == 0) {
      out.available_micros = headroom;
      return out;  // close to the end of the money: no budget, per-request holds decide
    }
    const int64_t id = NewHoldId(user_id);
    it = user.holds.emplace(id, Hold{user_id, 0, expires_at_ms, ""}).first;
    it->second.budget = true;
    it->second.expiry = user.by_expiry.emplace(expires_at_ms, id);
    shard.hold_user[id] = user_id;
  } else if (expires_at_ms > it->second.expires_at_ms) {
    user.by_expiry.erase(it->second.expiry);
    it->second.expires_at_ms = expires_at_ms;
    it->second.expiry = user.by_expiry.emplace(expires_at_ms, it->first);
  }
  it->second.amount_micros += add;
  user.held_micros += add;
  out.budget_id = it->first;
  out.added_micros = add;
  out.amount_micros = it->second.amount_micros;
  out.available_micros = headroom - add;
  return out;
}

void HoldBook::ReturnBudget(int64_t budget_id, int64_t spent_micros) {
  if (budget_id <= 0) return;
  Shard& shard = ShardOfHold(budget_id);
  std::lock_guard lock(shard.mu);
  auto h = shard.hold_user.find(budget_id);
  if (h == shard.hold_user.end()) return;
  User& user = shard.users[h->second];
  auto it = user.holds.find(budget_id);
  if (it == user.holds.end() || !it->second.budget) return;
  it->second.returned = true;
  // Records not here yet may still charge spent - charged: that much stays held for them.
  const int64_t owed = std::max<int64_t>(0, spent_micros - it->second.charged_micros);
  Shrink(shard, user, it, it->second.amount_micros - owed);
}

void HoldBook::Settle(const std::vector<Settlement>& settled) {
  for (const Settlement& s : settled) {
    Shard& shard = ShardOf(s.user_id);
    std::lock_guard lock(shard.mu);
    User& user = shard.users[s.user_id];
    if (s.hold_id > 0)
      if (auto it = user.holds.find(s.hold_id); it != user.holds.end()) Drop(shard, user, it);
    // A record spent from a budget: the money moves from the budget to the charges, so
    // balance - held stays where the budget put it. A redelivery (cost 0) changes nothing.
    if (s.budget_id > 0 && s.cost_micros > 0)
      if (auto it = user.holds.find(s.budget_id); it != user.holds.end() && it->second.budget) {
        it->second.charged_micros += s.cost_micros;
        Shrink(shard, user, it, s.cost_micros);
      }
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
