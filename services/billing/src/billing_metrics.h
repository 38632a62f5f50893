// The billing service's Prometheus series. No label carries a user or key id:
// those are unbounded; the usage report answers per-user questions.
#pragma once

#include <cstddef>

namespace prometheus {
class Registry;
class Counter;
class Histogram;
}  // namespace prometheus

namespace tollgate::billing {

class BillingMetrics final {
 public:
  explicit BillingMetrics(prometheus::Registry& registry);

  void CountHold(bool granted);
  void CountHoldError();
  // A budget granted (something added), refused (nothing added) or returned.
  void CountBudget(const char* result);
  void CountRecords(size_t recorded, size_t duplicates);
  void CountRecordUsageError();
  // One ingesting transaction committed with `records` records.
  void ObserveTransaction(size_t records);

 private:
  prometheus::Counter* holds_granted_;
  prometheus::Counter* holds_refused_;
  prometheus::Counter* holds_error_;
  prometheus::Counter* budgets_granted_;
  prometheus::Counter* budgets_refused_;
  prometheus::Counter* budgets_returned_;
  prometheus::Counter* records_recorded_;
  prometheus::Counter* records_duplicate_;
  prometheus::Counter* record_usage_error_;
  prometheus::Histogram* transaction_records_;
};

}  // namespace tollgate::billing
