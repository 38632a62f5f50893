#include "src/billing_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

namespace tollgate::billing {

BillingMetrics::BillingMetrics(prometheus::Registry& registry) {
  auto& holds = prometheus::BuildCounter()
                    .Name("tollgate_billing_holds_total")
                    .Help("Hold calls by result (granted, refused: insufficient_quota, error)")
                    .Register(registry);
  holds_granted_ = &holds.Add({{"result", "granted"}});
  holds_refused_ = &holds.Add({{"result", "refused"}});
  holds_error_ = &holds.Add({{"result", "error"}});
  auto& budgets = prometheus::BuildCounter()
                      .Name("tollgate_billing_budgets_total")
                      .Help(
                          "Edge budgets asked for or given back, by result (granted: money "
                          "added, refused: none added, returned)")
                      .Register(registry);
  budgets_granted_ = &budgets.Add({{"result", "granted"}});
  budgets_refused_ = &budgets.Add({{"result", "refused"}});
  budgets_returned_ = &budgets.Add({{"result", "returned"}});
  auto& records = prometheus::BuildCounter()
                      .Name("tollgate_billing_usage_records_total")
                      .Help(
                          "Usage records received, by result (recorded, duplicate: already "
                          "stored by an earlier delivery)")
                      .Register(registry);
  records_recorded_ = &records.Add({{"result", "recorded"}});
  records_duplicate_ = &records.Add({{"result", "duplicate"}});
  record_usage_error_ = &prometheus::BuildCounter()
                             .Name("tollgate_billing_record_usage_errors_total")
                             .Help("RecordUsage calls answered with an error (to be redelivered)")
                             .Register(registry)
                             .Add({});
  transaction_records_ = &prometheus::BuildHistogram()
                              .Name("tollgate_billing_ingest_transaction_records")
                              .Help(
                                  "Usage records per committed ingesting transaction (group "
                                  "commit)")
                              .Register(registry)
                              .Add({}, prometheus::Histogram::BucketBoundaries{
                                           1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500});
}

void BillingMetrics::CountHold(bool granted) {
  (granted ? holds_granted_ : holds_refused_)->Increment();
}

void BillingMetrics::CountHoldError() { holds_error_->Increment(); }

void BillingMetrics::CountBudget(const char* result) {
  const std::string r = result;
  (r == "granted"   ? budgets_granted_
   : r == "refused" ? budgets_refused_
                    : budgets_returned_)
      ->Increment();
}

void BillingMetrics::CountRecords(size_t recorded, size_t duplicates) {
  records_recorded_->Increment(static_cast<double>(recorded));
  records_duplicate_->Increment(static_cast<double>(duplicates));
}

void BillingMetrics::CountRecordUsageError() { record_usage_error_->Increment(); }

void BillingMetrics::ObserveTransaction(size_t records) {
  transaction_records_->Observe(static_cast<double>(records));
}

}  // namespace tollgate::billing
