// BillingClient over gRPC (tollgate.billing.v1.BillingService).
//
// Hold and ReleaseHold are unary calls with the edge's gRPC deadline. A hold that billing refuses
// is 429 insufficient_quota; a billing service that cannot be reached fails closed (503
// service_unavailable): billing cannot tell the edge ahead of time which accounts are unlimited,
// so the edge never lets a request run that nobody could charge. The UsageRecord does not wait for
// billing: Record writes it into the on-disk spool (edge.spool_dir) on the caller's thread, one
// write() into the page cache and no fsync, so a killed process loses no record of an answer
// that ended; a background sender makes the spool durable (one fsync per flush interval), then
// delivers the oldest spooled records to RecordUsage in batches and drops them from the spool
// only once acknowledged (billing answers after its commit). A failed batch is sent again after a
// pause; records spooled by an earlier run are delivered after a restart. Redelivery is harmless:
// billing is idempotent on the request id. A full spool (edge.spool_max_bytes) drops new records,
// logged and counted.
//
// Budgets (`budgets`, on by default; issue #13): billing grants the edge money of a user in
// advance, one hold in its hold book for the sum, and the edge holds each request from it in
// memory, without a call: the request's worst case is priced here with billing's own pricing
// (tollgate_billing_pricing) and the prices and multipliers billing sends with its answers. A
// request is held from the user's budget when the budget has its worst case left and is usable
// (until the call that got it was sent + its ttl); otherwise it is held by billing as before, and
// the budget loop asks for a budget for the user. The loop (one Budget call every
// `budget_interval` for every user that needs one) opens budgets, refills those that run low or
// near their deadline, and returns those idle for 100 ms once their requests finished, with what
// the edge spent from them. A hold from a budget is named "b<budget id>.<worst case>"; its usage
// record names the budget, and its cost (priced here) goes back to the budget's spent total while
// the rest of its worst case is free again. Close to the end of a user's money billing grants no
// budget: those requests are held one at a time by billing, exactly as without budgets. A failed
// call closes every budget (no more spending; returned once their requests finished), a changed
// incarnation (billing restarted) drops them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "src/clients.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace tollgate::edge {

struct GrpcBillingClientOptions {
  std::string target = "127.0.0.1:7104";
  std::chrono::milliseconds timeout{2000};  // deadline of Hold, ReleaseHold, Get*
  std::string spool_dir;                    // required
  uint64_t spool_max_bytes = 256ull << 20;
  std::chrono::milliseconds flush_interval{50};      // spool fsync + delivery at least this often
  size_t batch_size = 500;                           // records per RecordUsage at most
  std::chrono::milliseconds retry_pause{1000};       // after a failed delivery
  std::chrono::milliseconds deliver_timeout{10000};  // deadline of one RecordUsage
  bool budgets = true;
  std::chrono::milliseconds budget_interval{10};
  prometheus::Registry* registry = nullptr;
};

class GrpcBillingClient final : public BillingClient {
 public:
  // Opens (and replays) the spool; throws std::runtime_error when its directory is unusable.
  explicit GrpcBillingClient(GrpcBillingClientOptions options);
  ~GrpcBillingClient() override;  // Shutdown()

  // Gives what is spooled one bounded chance to reach billing, cancels the calls in flight and
  // waits for their callbacks. Undelivered records stay in the spool for the next start. Calls made
  // afterwards are answered at once as if billing were unreachable. Idempotent.
  void Shutdown();

  void Hold(HoldRequest request, std::function<void(HoldResult)> done) override;
  void Release(std::string hold_id) override;
  void Record(UsageRecord record) override;
  void GetAccount(const Principal& principal, std::function<void(AccountResult)> done) override;
  void GetUsage(const Principal& principal, bool key_only, std::string from_day, std::string to_day,
                std::function<void(UsageResult)> done) override;

  int64_t delivered() const;          // records acknowledged by billing
  size_t spooled() const;             // records in the spool, not acknowledged yet
  int64_t held_from_budgets() const;  // requests held from a budget, without a call
  int64_t holds_sent() const;         // Hold calls made (per-request holds)
  size_t live_budgets() const;        // budgets open for spending

  // Tests only: stops every background call at once, as if the process were killed: budgets are
  // not returned, recorded ones stay in the spool for the next start.
  void SimulateCrashForTest();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
