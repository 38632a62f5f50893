// BillingRepository on the billing service's own PostgreSQL database (migrations/).
#pragma once

#include "tollgate/billing/repository.h"

namespace tollgate {
class PgPool;
}  // namespace tollgate

namespace tollgate::billing {

class PgBillingRepository final : public BillingRepository {
 public:
  explicit PgBillingRepository(PgPool& pool) : pool_(pool) {}

  std::vector<PriceRecord> PricesOf(const std::string& model) override;
  std::vector<PriceRecord> ListPrices(const std::string& model) override;
  PriceRecord AddPrice(const PriceRecord& price, const AuditEntry& audit) override;
  int64_t MultiplierOf(int64_t user_id) override;
  void SetMultiplier(int64_t user_id, int64_t multiplier_ppm, const AuditEntry& audit) override;
  std::map<std::string, int64_t> ServiceTierMultipliers() override;
  void SetServiceTierMultiplier(const ServiceTierMultiplier& multiplier,
                                const AuditEntry& audit) override;

  void CreateAccount(int64_t user_id, int64_t credit_limit_micros,
                     const AuditEntry& audit) override;
  void TopUp(int64_t user_id, int64_t amount_micros, const std::string& note,
             const AuditEntry& audit) override;
  void SetCreditLimit(int64_t user_id, int64_t credit_limit_micros,
                      const AuditEntry& audit) override;
  Account GetAccount(int64_t user_id) override;
  std::vector<AccountState> LoadAccounts(const std::vector<int64_t>& users) override;
  std::vector<int64_t> SettledHolds(const std::vector<int64_t>& hold_ids) override;

  std::vector<bool> Ingest(const std::vector<UsageInput>& records, int64_t now_ms,
                           std::vector<int64_t>* costs = nullptr,
                           std::map<int64_t, int64_t>* versions = nullptr) override;

  std::vector<ReportRow> Report(const ReportQuery& query) override;
  std::vector<AuditEntry> ListAudit(int32_t limit) override;
  std::vector<RecordRow> ListRecords(const RecordQuery& query) override;

 private:
  PgPool& pool_;
};

}  // namespace tollgate::billing
