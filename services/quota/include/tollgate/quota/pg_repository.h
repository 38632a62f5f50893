// QuotaRepository on the quota service's own PostgreSQL database (migrations/).
#pragma once

#include "tollgate/quota/repository.h"

namespace tollgate {
class PgPool;
}  // namespace tollgate

namespace tollgate::quota {

class PgQuotaRepository final : public QuotaRepository {
 public:
  explicit PgQuotaRepository(PgPool& pool) : pool_(pool) {}

  std::vector<PolicyOverride> LoadPolicies() override;
  void UpsertPolicy(const PolicyOverride& policy, const AuditEntry& audit) override;
  bool DeletePolicy(SubjectKind kind, const std::string& subject, const AuditEntry& audit) override;
  std::vector<AuditEntry> ListAudit(int32_t limit) override;
  int64_t LoadUsage(const UsageKey& key) override;
  std::vector<size_t> CommitSettlements(const std::vector<SettledRequest>& batch) override;
  void PruneSettled(int days) override;

 private:
  PgPool& pool_;
};

}  // namespace tollgate::quota
