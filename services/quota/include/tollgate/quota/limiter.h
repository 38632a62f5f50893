// The quota service's admission logic: rate limits (RPM, TPM) per API key and per client IP, and
// token quotas per calendar month and day (UTC) per API key and per user. No gRPC, no SQL: the
// repository and the clock are injected.
//
// Algorithm
// - Rate windows are exact sliding logs, not fixed buckets and not approximations: each subject
//   keeps the admitted requests of the last `window` (60 s) as (time, tokens) entries. A request
//   is admitted when, counting every entry younger than `window`, requests + 1 <= RPM and
//   tokens + estimate <= TPM. So no 60 s interval, wherever it starts, ever holds more than RPM
//   requests or TPM tokens: there is no double burst at a minute's edge. An entry counts its
//   reserved estimate until Settle replaces it with the actual tokens; Release removes it (the
//   request never ran); expiry leaves it to age out (the request probably ran). Retry-after is
//   when enough of the oldest entries leave the window for the request to fit.
// - Monthly and daily quotas: settled (durable, loaded from the database on a subject's first
//   touch in a period) + live reservations + estimate <= quota. Estimates are upper bounds, so
//   usage never passes the quota. A reservation expires after `reservation_ttl` (a crashed edge
//   leaks nothing); a Settle after that charges the actual tokens to the subjects it names.
// - Every check and the reservation happen under one lock: concurrent Admits are serialised,
//   which is what makes the limits exact. Across replicas exactness comes from sharding: each
//   subject has one owner replica (replicas[hash(subject) % N]); this object only ever sees the
//   subjects its replica owns.
// - Time: windows and reservation expiry run on the clock's steady time (setting the wall clock
//   neither frees nor refills a window); calendar months and days read its wall time (UTC).
// - Windows are memory only: a replica restart forgets the current minute (the first minute
//   after a restart may admit up to one extra window's worth). Monthly/daily totals are durable.
// - Leases (capacity granted to an edge in advance, so it admits from memory): a lease of r
//   requests and t tokens of one subject, usable until U = now + lease_ttl, is one window entry
//   of (r, t) at time U (entries are kept in time order; an entry in the future counts in every
//   window check until it is 60 s old), and t reserved in the subject's month and day. Any real
//   request admitted from it happens in [now, U], so every window that could hold it is checked
//   with the lease in it: the windows stay exact. A lease is granted only from a share of the
//   headroom (1/kLeaseShare), and none when the headroom is below `lease_min_headroom` requests
//   or the share below one request's tokens: the last requests of a window are decided here,
//   one at a time, exactly as before. A refusal of a subject recalls its leases that are out
//   (RecalledLeases: the edges give back what they did not use). A settle through a lease moves its
//   estimate from the reservation to the settled total (and the window keeps the actual tokens); a
//   return gives back what was not used. A lease's reservation lives until settled, returned or U +
//   reservation_ttl (a dead edge's requests may still be running until then).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tollgate/clock.h"
#include "tollgate/quota/repository.h"

namespace tollgate::quota {

// 0: unlimited.
struct Limits {
  int64_t rpm = 0;
  int64_t tpm = 0;
  int64_t monthly_tokens = 0;
  int64_t daily_tokens = 0;
};

struct LimiterOptions {
  Limits key_defaults;   // all four apply
  Limits user_defaults;  // monthly and daily apply
  Limits ip_defaults;    // rpm and tpm apply
  std::chrono::milliseconds reservation_ttl{std::chrono::minutes(10)};
  std::chrono::milliseconds window{std::chrono::minutes(1)};
  std::chrono::milliseconds lease_ttl{0};  // 0: no leases
  int64_t lease_min_headroom = 64;         // requests (RPM limits)
};

// A lease is at most this share of a limit's headroom, so a few edges leasing at once leave
// most of it here, and a lease shrinks as the limit comes closer.
inline constexpr int64_t kLeaseShare = 8;
inline constexpr int64_t kLeaseUnlimited = -1;

struct Subjects {
  std::string api_key_id;
  std::string user_id;
  std::string client_ip;
};

enum class LimitKind { kRpm, kTpm, kMonthly, kDaily };
const char* LimitName(LimitKind kind);  // "rpm", "tpm", "monthly", "daily"

struct WindowState {
  int64_t limit = 0;  // 0: unlimited
  int64_t remaining = 0;
  std::chrono::milliseconds reset{0};  // until the window is back to its full limit
};

struct Denial {
  LimitKind limit = LimitKind::kRpm;
  SubjectKind subject = SubjectKind::kKey;
  std::chrono::milliseconds retry_after{0};
  std::string message;
  // OpenAI's code: insufficient_quota for monthly/daily, rate_limit_exceeded otherwise.
  bool insufficient_quota() const {
    return limit == LimitKind::kMonthly || limit == LimitKind::kDaily;
  }
};

struct AdmitInput {
  std::string request_id;
  Subjects subjects;
  int64_t estimated_tokens = 0;
};

struct AdmitDecision {
  std::optional<Denial> denial;
  std::string reservation_id;  // when admitted
  WindowState requests;        // the tightest requests window of the subjects checked
  WindowState tokens;          // likewise for tokens
};

struct SettleInput {
  std::string request_id;
  std::string reservation_id;
  int64_t actual_tokens = 0;
  Subjects subjects;           // charged when the reservation is gone (expired)
  int64_t lease_estimate = 0;  // when reservation_id is a lease's
};

struct LeaseAsk {
  SubjectKind kind = SubjectKind::kKey;
  std::string subject;
  int64_t requests = 0;
  int64_t tokens = 0;
  int64_t min_tokens = 1;
};

struct LeaseGrant {
  bool granted = false;
  std::string lease_id;
  int64_t requests = 0;  // kLeaseUnlimited: unlimited
  int64_t tokens = 0;
  std::chrono::milliseconds ttl{0};
  WindowState requests_window;  // after the lease
  WindowState tokens_window;
};

struct LeaseReturn {
  std::string lease_id;
  bool final = false;
  int64_t unused_requests = 0;
  int64_t unused_tokens = 0;
  int64_t used_requests = 0;  // on unlimited dimensions, since the last report
  int64_t used_tokens = 0;
};

struct EffectivePolicy {
  Limits limits;
  bool overridden = false;
};

struct UsageSnapshot {
  EffectivePolicy policy;
  int64_t monthly_tokens = 0;
  int64_t daily_tokens = 0;
  int64_t reserved_tokens = 0;
  int64_t window_requests = 0;
  int64_t window_tokens = 0;
};

class Limiter final {
 public:
  Limiter(LimiterOptions options, const Clock& clock, QuotaRepository& repo);
  Limiter(const Limiter&) = delete;
  Limiter& operator=(const Limiter&) = delete;

  // May block on the repository (a subject's first touch in a period).
  AdmitDecision Admit(const AdmitInput& input);
  // False: unknown or already gone.
  bool Release(const std::string& reservation_id);

  // May block on the repository (a subject's first touch in a period).
  LeaseGrant Lease(const LeaseAsk& ask);
  void ReturnLease(const LeaseReturn& ret);
  // Leases not yet returned whose subject was refused a request since they were granted: the
  // edges holding them should give back what they do not use.
  std::vector<std::string> RecalledLeases() const;
  size_t live_leases() const;
  // Random per process: an edge that sees it change drops its leases of the earlier one.
  uint64_t incarnation() const { return nonce_; }

  // Settle runs in two phases around the group commit:
  // Prepare resolves what each settlement adds to the durable totals (may block on the
  // repository); after CommitSettlements, Apply updates memory with the ones that were new.
  std::vector<SettledRequest> PrepareSettle(const std::vector<SettleInput>& inputs);
  void ApplySettled(const std::vector<SettleInput>& inputs,
                    const std::vector<SettledRequest>& prepared, const std::vector<bool>& fresh);

  // Drops expired reservations and counters of past periods (also done lazily by Admit).
  void Expire();

  void ReplacePolicies(std::vector<PolicyOverride> overrides);
  void PutPolicy(const PolicyOverride& policy);
  void RemovePolicy(SubjectKind kind, const std::string& subject);
  EffectivePolicy Policy(SubjectKind kind, const std::string& subject) const;
  UsageSnapshot Usage(SubjectKind kind, const std::string& subject);

  size_t live_reservations() const;

 private:
  using SubjectRef = std::pair<SubjectKind, std::string>;
  struct Entry {
    Clock::SteadyTime at;
    uint64_t seq;
    int64_t tokens;
    int64_t requests = 1;  // a lease's entry holds many
  };
  struct Window {
    std::deque<Entry> entries;  // in time order (a lease's entry lies in the future)
    int64_t tokens = 0;
    int64_t requests = 0;
  };
  struct Cell {
    int64_t settled = 0;
    int64_t reserved = 0;
  };
  struct Reservation {
    std::string request_id;
    uint64_t seq = 0;
    Clock::SteadyTime at;  // its window entries' time (the search key)
    int64_t tokens = 0;
    std::vector<SubjectRef> windows;
    std::vector<UsageKey> cells;
    std::multimap<Clock::SteadyTime, std::string>::iterator expiry;
  };
  struct LeaseState {
    SubjectRef subject;
    uint64_t seq = 0;
    Clock::SteadyTime at;   // its window entry's time (the lease's end)
    bool windowed = false;  // has an entry (key, IP)
    bool unlimited_requests = false;
    bool unlimited_tokens = false;
    int64_t reserved = 0;  // tokens still reserved in `cells`
    std::vector<UsageKey> cells;
    bool returned = false;
    bool recalled = false;
    std::multimap<Clock::SteadyTime, std::string>::iterator expiry;
  };

  EffectivePolicy PolicyLocked(SubjectKind kind, const std::string& subject) const;
  void EnsureLoaded(const std::vector<UsageKey>& keys);
  void ExpireLocked(Clock::SteadyTime now);
  void DropReservationLocked(std::unordered_map<std::string, Reservation>::iterator it,
                             bool remove_window_entries, std::optional<int64_t> actual_tokens);
  Window& WindowLocked(const SubjectRef& ref, Clock::SteadyTime now);
  // The entry of `seq` at `at`, found by a binary search on time (entries are in time order).
  std::deque<Entry>::iterator FindEntryLocked(Window& w, Clock::SteadyTime at, uint64_t seq);
  Entry* FindEntryLocked(const SubjectRef& ref, Clock::SteadyTime at, uint64_t seq);
  void InsertEntryLocked(Window& w, Entry e);
  void DropLeaseLocked(std::unordered_map<std::string, LeaseState>::iterator it);
  void UnreserveLocked(const std::vector<UsageKey>& cells, int64_t tokens);
  std::string NewReservationId(uint64_t seq);

  const LimiterOptions options_;
  const Clock& clock_;
  QuotaRepository& repo_;
  const uint64_t nonce_;

  mutable std::mutex mu_;
  uint64_t next_seq_ = 1;
  std::map<SubjectRef, PolicyOverride> overrides_;
  std::map<SubjectRef, Window> windows_;
  std::map<UsageKey, Cell> cells_;
  std::unordered_map<std::string, Reservation> reservations_;
  std::unordered_map<std::string, LeaseState> leases_;
  std::multimap<Clock::SteadyTime, std::string> expiries_;
};

// "2026-11" and "2026-11-22" for `t` in UTC, and the start of the next period.
std::string PeriodOf(PeriodKind kind, Clock::WallTime t);
Clock::WallTime NextPeriodStart(PeriodKind kind, Clock::WallTime t);

}  // namespace tollgate::quota
