// Where billing keeps its ledger. Expected failures throw Error;
// anything else (the database is down) throws another std::exception.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/audit.h"
#include "tollgate/billing/cost.h"
#include "tollgate/billing/hold_book.h"
#include "tollgate/errors.h"

namespace tollgate::billing {

// One admin action, written in the transaction that makes the change.
using AuditEntry = ::tollgate::AuditEntry;

struct Account {
  int64_t user_id = 0;
  int64_t balance_micros = 0;  // top-ups - settled costs
  int64_t credit_limit_micros = 0;
  int64_t held_micros = 0;  // live holds
  int64_t total_top_ups_micros = 0;
  int64_t total_cost_micros = 0;
  int64_t multiplier_ppm = kMultiplierOne;
  int64_t available_micros() const { return balance_micros + credit_limit_micros - held_micros; }
};

// What a service tier costs relative to the default: cost = price x user x tier multiplier.
struct ServiceTierMultiplier {
  std::string tier;
  int64_t multiplier_ppm = kMultiplierOne;
};

// A usage record as billing stores it (cost is computed by the repository,
// in the ingesting transaction, from the price in effect at started_at_ms).
struct UsageInput {
  std::string request_id;
  int64_t user_id = 0;
  int64_t api_key_id = 0;
  std::string model;
  std::string upstream_model;
  int64_t upstream_key_id = 0;
  std::string provider;
  int64_t hold_id = 0;
  // The edge budget the request was admitted under (0: none); its cost shrinks that budget in
  // the hold book. Not stored.
  int64_t budget_id = 0;
  TokenCounts tokens;
  bool usage_estimated = false;
  bool streamed = false;
  // The tier that served the request; empty: the default tier.
  std::string service_tier;
  // What the endpoint bills by beyond tokens (issue #12); empty kind: a token endpoint.
  std::string endpoint_kind;
  UnitCounts units;
  int32_t status = 0;
  int64_t latency_ms = 0;
  bool client_disconnected = false;
  int32_t attempts = 0;
  std::string client_ip;
  int64_t started_at_ms = 0;
  int64_t finished_at_ms = 0;
  // Opt-in per key (redacted by the edge); both empty: nothing stored.
  std::string request_body;
  std::string response_body;
  bool bodies_truncated = false;
};

struct RecordQuery {
  int64_t user_id = 0;     // 0: any
  int64_t api_key_id = 0;  // 0: any
  std::string request_id;  // empty: any
  int64_t before_ms = 0;   // started before; 0: any
  int32_t limit = 100;
  bool include_bodies = false;
};

struct RecordRow {
  UsageInput record;  // bodies filled only when asked for and stored
  int64_t cost_micros = 0;
  bool has_bodies = false;
};

struct StoredUsage {
  std::string request_id;
  int64_t user_id = 0;
  int64_t cost_micros = 0;
  int64_t hold_id = 0;
  TokenCounts tokens;
};

// In the order a report groups and sorts by them.
enum class Dimension { kDay, kUser, kKey, kModel };

struct ReportQuery {
  int64_t from_day = 0;  // days since the epoch, inclusive
  int64_t to_day = 0;    // inclusive
  std::vector<Dimension> group_by;
  int64_t user_id = 0;     // 0: every user
  int64_t api_key_id = 0;  // 0: every key
};

struct ReportRow {
  std::optional<int64_t> day;
  std::optional<int64_t> user_id;
  std::optional<int64_t> api_key_id;
  std::optional<std::string> model;
  int64_t requests = 0;
  TokenCounts tokens;
  int64_t cost_micros = 0;
};

class BillingRepository {
 public:
  virtual ~BillingRepository() = default;

  // Every price of `model` (oldest first).
  virtual std::vector<PriceRecord> PricesOf(const std::string& model) = 0;
  // Every price (of `model` when not empty), newest first.
  virtual std::vector<PriceRecord> ListPrices(const std::string& model) = 0;
  virtual PriceRecord AddPrice(const PriceRecord& price, const AuditEntry& audit) = 0;
  virtual int64_t MultiplierOf(int64_t user_id) = 0;
  virtual void SetMultiplier(int64_t user_id, int64_t multiplier_ppm, const AuditEntry& audit) = 0;
  // Every service tier's multiplier, by tier.
  virtual std::map<std::string, int64_t> ServiceTierMultipliers() = 0;
  virtual void SetServiceTierMultiplier(const ServiceTierMultiplier& multiplier,
                                        const AuditEntry& audit) = 0;

  virtual void CreateAccount(int64_t user_id, int64_t credit_limit_micros,
                             const AuditEntry& audit) = 0;
  // kNotFound without an account.
  virtual void TopUp(int64_t user_id, int64_t amount_micros, const std::string& note,
                     const AuditEntry& audit) = 0;
  virtual void SetCreditLimit(int64_t user_id, int64_t credit_limit_micros,
                              const AuditEntry& audit) = 0;
  // kNotFound without an account. held_micros is left 0: live holds are in memory (HoldBook).
  virtual Account GetAccount(int64_t user_id) = 0;
  // The accounts of `users`, in that order (exists false for a user without one).
  virtual std::vector<AccountState> LoadAccounts(const std::vector<int64_t>& users) = 0;
  // Which of `hold_ids` a stored usage record names (settled, possibly by another replica).
  virtual std::vector<int64_t> SettledHolds(const std::vector<int64_t>& hold_ids) = 0;

  // Stores the records not stored yet (by request_id) and charges them, with
  // the daily aggregates, in one transaction. Returns, per input record and in
  // input order, whether this call stored it; `costs` (when given) gets each
  // record's cost (0 for one stored before), `versions` each charged account's
  // new version (accounts.version).
  virtual std::vector<bool> Ingest(const std::vector<UsageInput>& records, int64_t now_ms,
                                   std::vector<int64_t>* costs = nullptr,
                                   std::map<int64_t, int64_t>* versions = nullptr) = 0;

  virtual std::vector<ReportRow> Report(const ReportQuery& query) = 0;
  virtual std::vector<AuditEntry> ListAudit(int32_t limit) = 0;
  // Single usage records, newest first.
  virtual std::vector<RecordRow> ListRecords(const RecordQuery& query) = 0;
};

}  // namespace tollgate::billing
