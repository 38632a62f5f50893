// The quota repository in memory, for the limiter's pure-logic tests (limiter_test.cpp,
// lease_test.cpp): no policies, usage per key, settlements idempotent on the request id as the
// PostgreSQL repository's are.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tollgate/quota/limiter.h"

namespace tollgate::quota {

class MemoryQuotaRepository final : public QuotaRepository {
 public:
  std::vector<PolicyOverride> LoadPolicies() override { return {}; }
  void UpsertPolicy(const PolicyOverride&, const AuditEntry&) override {}
  bool DeletePolicy(SubjectKind, const std::string&, const AuditEntry&) override { return true; }
  std::vector<AuditEntry> ListAudit(int32_t) override { return {}; }
  int64_t LoadUsage(const UsageKey& key) override {
    auto it = usage.find(key);
    return it == usage.end() ? 0 : it->second;
  }
  std::vector<size_t> CommitSettlements(const std::vector<SettledRequest>& batch) override {
    std::vector<size_t> fresh;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!settled.insert(batch[i].request_id).second) continue;
      fresh.push_back(i);
      for (const auto& d : batch[i].deltas) usage[d.key] += d.tokens;
    }
    return fresh;
  }
  void PruneSettled(int) override {}

  std::map<UsageKey, int64_t> usage;
  std::set<std::string> settled;
};

}  // namespace tollgate::quota
