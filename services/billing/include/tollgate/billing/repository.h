// Where billing keeps its ledger. Expected failures throw BillingError;
// anything else (the database is down) throws another std::exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/admin_error.h"
#include "tollgate/audit.h"
#include "tollgate/billing/cost.h"

namespace tollgate::billing {

// An expected refusal (bad input, unknown or duplicate object); the message is
// safe to show the caller.
using BillingError = ::tollgate::AdminError;

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

struct NewHold {
  int64_t user_id = 0;
  std::string request_id;
  int64_t amount_micros = 0;
  int64_t now_ms = 0;
  int64_t expires_at_ms = 0;
};

struct HoldOutcome {
  bool granted = false;
  int64_t hold_id = 0;
  int64_t available_micros = 0;  // before this hold
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
  TokenCounts tokens;
  bool usage_estimated = false;
  bool streamed = false;
  int32_t status = 0;
  int64_t latency_ms = 0;
  bool client_disconnected = false;
  int32_t attempts = 0;
  std::string client_ip;
  int64_t started_at_ms = 0;
  int64_t finished_at_ms = 0;
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

  virtual void CreateAccount(int64_t user_id, int64_t credit_limit_micros,
                             const AuditEntry& audit) = 0;
  // kNotFound without an account.
  virtual void TopUp(int64_t user_id, int64_t amount_micros, const std::string& note,
                     const AuditEntry& audit) = 0;
  virtual void SetCreditLimit(int64_t user_id, int64_t credit_limit_micros,
                              const AuditEntry& audit) = 0;
  // Holds count when they expire after `now_ms`. kNotFound without an account.
  virtual Account GetAccount(int64_t user_id, int64_t now_ms) = 0;

  // Atomically: grant iff balance + credit limit - live holds >= amount (a user
  // without an account has 0 of both), and record the hold.
  virtual HoldOutcome PlaceHold(const NewHold& hold) = 0;
  // Live -> released; anything else is left as is.
  virtual void ReleaseHold(int64_t hold_id) = 0;
  // Live holds that expired by `now_ms` -> expired (at most `limit`); returns how many.
  // Housekeeping only: an expired hold stops counting whether or not this ran.
  virtual int64_t ExpireHolds(int64_t now_ms, int64_t limit) = 0;

  // Stores the records not stored yet (by request_id) and charges them, with
  // the daily aggregates and hold settlement, in one transaction. Returns,
  // per input record and in input order, whether this call stored it.
  virtual std::vector<bool> Ingest(const std::vector<UsageInput>& records, int64_t now_ms) = 0;

  virtual std::vector<ReportRow> Report(const ReportQuery& query) = 0;
  virtual std::vector<AuditEntry> ListAudit(int32_t limit) = 0;
};

}  // namespace tollgate::billing
