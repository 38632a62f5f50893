// The billing logic: validates and normalises what arrives, prices holds, and
// words the audit trail. Storage and its atomicity live in BillingRepository.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/billing/hold_book.h"
#include "tollgate/billing/repository.h"
#include "tollgate/clock.h"

namespace tollgate::billing {

struct BillingOptions {
  // A hold neither settled nor released stops counting after this.
  std::chrono::milliseconds hold_ttl{std::chrono::minutes(10)};
  // How long Hold trusts the prices and multipliers it read (changes made on this
  // replica apply at once). Settlement always reads them in its own transaction,
  // so staleness can only make a hold's estimate off, never a cost.
  std::chrono::milliseconds price_cache_ttl{std::chrono::seconds(5)};
  // A user without holds is dropped from the hold book after this long idle.
  std::chrono::milliseconds idle_account{std::chrono::minutes(10)};
  // Budgets (issue #13): an edge spends a budget until the call that got it was sent + budget_ttl;
  // the book counts it until its last extension + budget_ttl + hold_ttl (requests admitted from
  // it may still be running, and their records on their way).
  std::chrono::milliseconds budget_ttl{std::chrono::seconds(1)};
  // Headroom (balance + credit - held) below which no budget grows: per-request holds decide.
  int64_t budget_min_headroom_micros = 1'000'000;
  // After start, no hold or budget is granted for this long: budgets of the previous incarnation
  // may still be spent by edges until then (0: none; the module sets budget_ttl).
  std::chrono::milliseconds quiet_after_start{0};
};

// An edge's ask for a user's budget (budget_id 0: a new one), and the answer.
struct BudgetAsk {
  int64_t user_id = 0;
  int64_t budget_id = 0;
  int64_t want_micros = 0;   // to add
  int64_t min_micros = 0;    // less than this is not worth adding (one request's worst case)
  int64_t left_micros = -1;  // what the edge has not spent of it (-1: unknown, all of it)
};
struct BudgetGrant {
  bool found = true;  // false: the budget named is gone here (expired, restarted): drop it
  int64_t budget_id = 0;
  int64_t added_micros = 0;
  int64_t amount_micros = 0;
  int64_t multiplier_ppm = 1'000'000;  // the user's, for the edge's worst cases and costs
  int64_t ttl_ms = 0;
};
// What an edge needs to price requests itself (cost.h): the prices in effect now and those that
// take effect later, per model, and the service tiers' multipliers. `version` names the content.
struct PriceSnapshot {
  std::string version;
  std::vector<PriceRecord> prices;
  std::map<std::string, int64_t> tiers;
};

struct HoldInput {
  std::string request_id;
  int64_t user_id = 0;
  int64_t api_key_id = 0;
  std::string model;
  std::string provider;
  int64_t estimated_prompt_tokens = 0;
  int64_t max_completion_tokens = 0;
  // The tier the client asked for; empty: none. Priced with the larger of its multiplier and the
  // default tier's: the upstream serves either the tier asked for or its default one, so the hold
  // is not smaller than the record's cost for the same tokens.
  std::string service_tier;
  // Endpoints billed by units (images, audio, speech): the most the request can use of each.
  UnitCounts units;
  // The least the hold may be (micro-units), whatever the above price at: a request whose cost
  // no token count bounds (the edge's /v1 catch-all) still needs that much available.
  int64_t min_amount_micros = 0;
};

struct HoldDecision {
  bool granted = false;
  int64_t hold_id = 0;
  int64_t amount_micros = 0;
  int64_t available_micros = 0;
  int64_t expires_at_ms = 0;
};

struct NewPrice {
  std::string model;
  std::string provider;
  int64_t input_micros_per_mtok = 0;
  int64_t output_micros_per_mtok = 0;
  std::optional<int64_t> cached_input_micros_per_mtok;  // unset: the input price
  std::optional<int64_t> cache_write_micros_per_mtok;   // unset: the input price
  int64_t effective_from_ms = 0;                        // 0: now
  // Unit prices (issue #12): per image as "SIZE/QUALITY=MICROS" (ParseImageRate), per minute of
  // audio, per 1M characters.
  std::vector<std::string> image_prices;
  int64_t audio_micros_per_minute = 0;
  int64_t micros_per_mchar = 0;
};

class Billing final {
 public:
  Billing(BillingRepository& repo, const Clock& clock, BillingOptions options = {});

  // Decided in memory (HoldBook); reads the database only for a user's first hold (or the first
  // after an admin change of its account).
  HoldDecision Hold(const HoldInput& input);
  // Hold without blocking: nullopt when deciding needs the database (the prices, the multiplier
  // or the account are not cached); then call Hold from a thread that may wait.
  std::optional<HoldDecision> TryHold(const HoldInput& input);
  void Release(int64_t hold_id);
  // Budgets, in one batch per edge call. May read the database (accounts not loaded, prices).
  std::vector<BudgetGrant> Budgets(const std::vector<BudgetAsk>& asks);
  void ReturnBudget(int64_t budget_id, int64_t spent_micros) {
    book_.ReturnBudget(budget_id, spent_micros);
  }
  // Cached like the prices Hold reads (price_cache_ttl; changes on this replica at once).
  PriceSnapshot Prices();
  // Drops expired holds and idle users (housekeeping: an expired hold stops counting at once
  // whether or not this ran); returns how many holds expired.
  int64_t ExpireHolds();
  // Reloads the balances of the users in the hold book and ends holds whose records another
  // replica stored (the refresher calls it every billing.balance_refresh).
  void RefreshBalances();
  int64_t live_holds() { return book_.live_holds(); }
  // What this replica's next hold for the user is decided against; nullopt: not loaded here.
  std::optional<int64_t> AvailableForHolds(int64_t user_id) {
    return book_.Available(user_id, clock_.UnixMillis());
  }
  // Normalises the records (missing times become now, counts are clamped) and
  // stores them in one transaction. Returns per record whether it was new.
  std::vector<bool> Record(std::vector<UsageInput> records);

  // Admin operations: Error for bad input; each is audited with `actor`.
  PriceRecord SetPrice(const std::string& actor, const NewPrice& price);
  std::vector<PriceRecord> ListPrices(const std::string& model);
  void SetMultiplier(const std::string& actor, int64_t user_id, int64_t multiplier_ppm);
  ServiceTierMultiplier SetServiceTierMultiplier(const std::string& actor, const std::string& tier,
                                                 int64_t multiplier_ppm);
  std::vector<ServiceTierMultiplier> ListServiceTierMultipliers();
  Account CreateAccount(const std::string& actor, int64_t user_id, int64_t credit_limit_micros);
  Account TopUp(const std::string& actor, int64_t user_id, int64_t amount_micros,
                const std::string& note);
  Account SetCreditLimit(const std::string& actor, int64_t user_id, int64_t credit_limit_micros);
  Account GetBalance(int64_t user_id);
  // Days as "YYYY-MM-DD", inclusive.
  std::vector<ReportRow> UsageReport(const std::string& from_day, const std::string& to_day,
                                     std::vector<Dimension> group_by, int64_t user_id,
                                     int64_t api_key_id = 0);
  // One user's own usage (api_key_id 0: all its keys) per day, for the edge.
  std::vector<ReportRow> UserUsage(int64_t user_id, int64_t api_key_id, const std::string& from_day,
                                   const std::string& to_day);
  std::vector<AuditEntry> ListAuditLog(int32_t limit);
  std::vector<RecordRow> ListRecords(RecordQuery query);

 private:
  AuditEntry Audit(const std::string& actor, std::string action, std::string target,
                   std::string details) const;
  std::vector<PriceRecord> CachedPrices(const std::string& model, int64_t now);
  int64_t CachedMultiplier(int64_t user_id, int64_t now);
  std::optional<std::vector<PriceRecord>> PeekPrices(const std::string& model, int64_t now);
  std::optional<int64_t> PeekMultiplier(int64_t user_id, int64_t now);
  // The multiplier a hold for `tier` is priced with (see HoldInput::service_tier).
  int64_t CachedTierMultiplier(const std::string& tier, int64_t now);
  std::optional<int64_t> PeekTierMultiplier(const std::string& tier, int64_t now);
  std::optional<HoldDecision> Decide(const HoldInput& input, bool may_block);
  void LoadAccounts(const std::vector<int64_t>& users);

  template <typename T>
  struct Cached {
    T value;
    int64_t loaded_at_ms = 0;
  };

  BillingRepository& repo_;
  const Clock& clock_;
  BillingOptions options_;
  std::mutex cache_mu_;
  std::map<std::string, Cached<std::vector<PriceRecord>>> prices_;
  std::map<int64_t, Cached<int64_t>> multipliers_;
  // The whole (small) service_tier_multipliers table; loaded_at_ms 0: not loaded.
  Cached<std::map<std::string, int64_t>> tier_multipliers_;
  Cached<PriceSnapshot> snapshot_;  // loaded_at_ms 0: not loaded
  int64_t quiet_until_ms_ = 0;
  HoldBook book_;
};

}  // namespace tollgate::billing
