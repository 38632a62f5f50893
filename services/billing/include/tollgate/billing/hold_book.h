// Live holds, in memory: the request path's side of billing. A hold is a reservation, not money:
// money moves only when a usage record is committed (the ledger in PostgreSQL). So the decision
// "can this user pay for this request" is made here, in microseconds, against each account's
// balance as last read from the database plus what this replica committed since, minus the live
// holds this replica granted. No database write per request.
//
// Exactness: holds granted by one replica never spend the same money twice (one lock per user
// shard). Balances come from the database (loaded at a user's first hold, reloaded after an admin
// change and every refresh interval) and move with each record this replica commits, in the same
// step as the record's hold is settled. Every change of an account bumps accounts.version in the
// statement that makes it, and the book keeps the costs it applied by version, so a balance read
// at version V is completed with exactly the charges after V: a reload never counts a commit
// twice nor misses one, however the read and the commits interleave. A crash loses only
// reservations: the records, and so every balance, stay exact.
//
// Budgets (issue #13): an edge's budget for a user is one hold in the book for the sum, which the
// edge spends request by request without a call. Records that name the budget charge their cost
// and shrink the budget by it in the same step, so balance - held never moves under the edge: the
// money the edge may still spend stays held. A returned budget keeps what the edge spent and
// billing has not been told of yet (records still on their way) until those records arrive or the
// budget expires.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace tollgate::billing {

// An account as the database has it, for the book.
struct AccountState {
  int64_t user_id = 0;
  bool exists = false;  // no account: balance and credit 0 (only free requests pass)
  int64_t balance_micros = 0;
  int64_t credit_limit_micros = 0;
  int64_t version = 0;  // accounts.version of this read
};

struct BookHold {
  bool granted = false;
  bool request_id_taken = false;  // another user's hold has this request id
  int64_t hold_id = 0;
  int64_t available_micros = 0;  // before this hold
};

// A committed record's effect on the book: its hold ends (or its budget shrinks by its cost), and
// its cost leaves the balance.
struct Settlement {
  int64_t user_id = 0;
  int64_t hold_id = 0;      // 0: none
  int64_t cost_micros = 0;  // 0 for a record stored before (a redelivery)
  int64_t version = 0;      // the account's version after the charge (0: no charge)
  int64_t budget_id = 0;    // the budget the record was admitted under; 0: none
};

// What PlaceBudget did.
struct BookBudget {
  bool found = true;  // false: the budget named is not (or no longer) in this book
  int64_t budget_id = 0;
  int64_t added_micros = 0;      // 0: nothing added (refused: close to the end of the money)
  int64_t amount_micros = 0;     // held for it now
  int64_t available_micros = 0;  // balance + credit - held, after this
};

// How budgets are sized from a user's headroom (balance + credit - held).
struct BudgetSizing {
  int64_t min_headroom_micros = 0;  // below this no budget grows: per-request holds decide
  int64_t share_divisor = 8;        // a grant is at most headroom / this
};

class HoldBook final {
 public:
  HoldBook();

  // The user's account must be loaded (NeedsLoad false), else nullopt: load it, then Place again.
  std::optional<BookHold> Place(int64_t user_id, const std::string& request_id,
                                int64_t amount_micros, int64_t now_ms, int64_t expires_at_ms);
  // True when Place would need the user's account first (never loaded, or invalidated).
  bool NeedsLoad(int64_t user_id);
  // Installs accounts read from the database: the balance read, minus the charges this replica
  // committed after that version.
  void Load(const std::vector<AccountState>& accounts);
  // The account changed under an admin action: reload it before its next hold.
  void Invalidate(int64_t user_id);

  void Release(int64_t hold_id);
  // A new budget (budget_id 0) or more for an existing one: adds up to `want_micros` (at most the
  // headroom's share, nothing when that is below `min_micros` or the headroom below the minimum)
  // and extends its expiry to `expires_at_ms` (also when nothing is added). nullopt: the user's
  // account is not loaded.
  // `left_micros`: what the edge has not spent of it yet (-1: all of it); the unspent part is at
  // most a share of the headroom it is granted from.
  std::optional<BookBudget> PlaceBudget(int64_t user_id, int64_t budget_id, int64_t want_micros,
                                        int64_t min_micros, const BudgetSizing& sizing,
                                        int64_t now_ms, int64_t expires_at_ms,
                                        int64_t left_micros = -1);
  // The edge is done with the budget, having spent `spent_micros` from it in all: what records
  // have not charged of that yet stays held (until they arrive or the budget expires).
  void ReturnBudget(int64_t budget_id, int64_t spent_micros);
  // After records committed on this replica: their holds end, their costs leave the balances.
  void Settle(const std::vector<Settlement>& settled);
  // Holds settled elsewhere (another replica ingested their records) end too.
  void Forget(const std::vector<int64_t>& hold_ids);
  // Drops expired holds and idle users without holds; returns how many holds expired.
  int64_t Expire(int64_t now_ms, int64_t idle_after_ms);

  int64_t HeldMicros(int64_t user_id, int64_t now_ms);
  // What the next hold of the user is decided against (balance + credit - held); nullopt when
  // its account is not loaded.
  std::optional<int64_t> Available(int64_t user_id, int64_t now_ms);
  std::vector<int64_t> Users();
  std::vector<int64_t> LiveHoldIds();
  int64_t live_holds();

 private:
  using ExpiryIndex = std::multimap<int64_t, int64_t>;  // expires_at_ms -> hold id
  struct Hold {
    int64_t user_id;
    int64_t amount_micros;
    int64_t expires_at_ms;
    std::string request_id;
    ExpiryIndex::iterator expiry;
    bool budget = false;
    bool returned = false;       // a budget the edge gave back (only records may still come)
    int64_t charged_micros = 0;  // a budget's: what records naming it charged here
  };
  struct User {
    bool loaded = false;
    int64_t balance_micros = 0;
    int64_t credit_limit_micros = 0;
    int64_t held_micros = 0;  // sum of the live holds below
    std::map<int64_t, Hold> holds;
    ExpiryIndex by_expiry;  // the holds above by expiry: expiring costs O(expired), not O(holds)
    int64_t last_used_ms = 0;
    int64_t version = 0;                 // the newest account version the balance includes
    std::map<int64_t, int64_t> charges;  // version -> cost, for charges after the last load
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<int64_t, User> users;
    std::unordered_map<int64_t, int64_t> hold_user;  // hold -> user
  };
  // Request ids are unique across users, so they have shards of their own (taken after a
  // user shard, never before).
  struct RequestShard {
    std::mutex mu;
    std::unordered_map<std::string, std::pair<int64_t, int64_t>> holds;  // -> (hold, user)
  };
  RequestShard& ShardOfRequest(const std::string& request_id) {
    return requests_[std::hash<std::string>{}(request_id) % kShards];
  }
  static constexpr size_t kShards = 16;
  Shard& ShardOf(int64_t user_id) { return shards_[static_cast<uint64_t>(user_id) % kShards]; }
  // A hold id carries its user's shard in its low bits, so Release needs only the id.
  Shard& ShardOfHold(int64_t hold_id) { return shards_[static_cast<uint64_t>(hold_id) % kShards]; }
  void Drop(Shard& shard, User& user, std::map<int64_t, Hold>::iterator it);
  void ExpireUser(Shard& shard, User& user, int64_t now_ms, int64_t* expired);
  void Shrink(Shard& shard, User& user, std::map<int64_t, Hold>::iterator it, int64_t by);
  int64_t NewHoldId(int64_t user_id);

  Shard shards_[kShards];
  RequestShard requests_[kShards];
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
};

}  // namespace tollgate::billing
