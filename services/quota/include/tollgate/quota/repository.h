// Where the quota service keeps what must survive a restart: policy overrides,
// settled monthly/daily token totals and the request ids already settled.
// Failures (the database is down) throw std::exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/audit.h"

namespace tollgate::quota {

enum class SubjectKind { kKey, kUser, kIp };
enum class PeriodKind { kMonth, kDay };

const char* SubjectName(SubjectKind kind);  // "key", "user", "ip"

// A stored override; an unset figure falls back to the configured default. 0: unlimited.
struct PolicyOverride {
  SubjectKind kind = SubjectKind::kKey;
  std::string subject;
  std::optional<int64_t> rpm;
  std::optional<int64_t> tpm;
  std::optional<int64_t> monthly_tokens;
  std::optional<int64_t> daily_tokens;
};

// One calendar period's counter of one subject. `period` is "2026-11" or "2026-11-22" (UTC).
struct UsageKey {
  SubjectKind kind = SubjectKind::kKey;
  std::string subject;
  PeriodKind period_kind = PeriodKind::kMonth;
  std::string period;
  auto operator<=>(const UsageKey&) const = default;
};

struct UsageDelta {
  UsageKey key;
  int64_t tokens = 0;
};

// One settled request and what it adds to the durable totals.
struct SettledRequest {
  // The idempotency key: the request id and the reservation id (unique per admission), so a
  // client that repeats its own x-request-id is still charged for every request.
  std::string request_id;
  std::vector<UsageDelta> deltas;
};

class QuotaRepository {
 public:
  virtual ~QuotaRepository() = default;
  virtual std::vector<PolicyOverride> LoadPolicies() = 0;
  // Each policy change writes `audit` to the audit log in its own transaction; a failed change
  // (or a delete of nothing) writes none.
  virtual void UpsertPolicy(const PolicyOverride& policy, const AuditEntry& audit) = 0;
  // False: there was none.
  virtual bool DeletePolicy(SubjectKind kind, const std::string& subject,
                            const AuditEntry& audit) = 0;
  // Settled tokens of one period; 0 when none.
  virtual int64_t LoadUsage(const UsageKey& key) = 0;
  // One transaction (group commit): records the request ids not seen before and adds the deltas
  // of exactly those. Returns the indexes in `batch` that were new.
  virtual std::vector<size_t> CommitSettlements(const std::vector<SettledRequest>& batch) = 0;
  // Forgets settled request ids older than `days` (they can no longer be retried).
  virtual void PruneSettled(int days) = 0;
  // The newest `limit` audit entries, newest first.
  virtual std::vector<AuditEntry> ListAudit(int32_t limit) = 0;
};

}  // namespace tollgate::quota
