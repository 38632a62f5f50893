#include "test/permissive_clients.h"

#include "tollgate/log.h"

namespace tollgate::edge {

void AllowAllAuthClient::Authenticate(std::string api_key, std::string client_ip,
                                      std::function<void(AuthResult)> done) {
  AuthResult result;
  result.principal.api_key_id = "anonymous";
  result.principal.user_id = "anonymous";
  done(std::move(result));
}

void AllowAllQuotaClient::Admit(AdmitRequest request, std::function<void(AdmitResult)> done) {
  done(AdmitResult{});
}

void DiscardingBillingClient::Hold(HoldRequest request, std::function<void(HoldResult)> done) {
  done(HoldResult{});
}

void DiscardingBillingClient::Record(UsageRecord record) {
  if (!log::Enabled(log::Level::kDebug)) return;
  log::Write(log::Level::kDebug, "edge", "usage record (not billed: no billing client)",
             {{"model", record.model},
              {"upstream_key_id", record.upstream_key_id},
              {"prompt_tokens", record.prompt_tokens},
              {"completion_tokens", record.completion_tokens},
              {"usage_estimated", record.usage_estimated},
              {"streamed", record.streamed},
              {"status", record.http_status},
              {"latency_ms", record.latency.count()},
              {"client_disconnected", record.client_disconnected}},
             record.request_id);
}

void DiscardingBillingClient::GetAccount(const Principal& principal,
                                         std::function<void(AccountResult)> done) {
  done(AccountResult{Failure{ErrorCode::kServiceUnavailable, "Billing is not enabled."}});
}

void DiscardingBillingClient::GetUsage(const Principal& principal, bool key_only,
                                       std::string from_day, std::string to_day,
                                       std::function<void(UsageResult)> done) {
  done(UsageResult{Failure{ErrorCode::kServiceUnavailable, "Billing is not enabled."}});
}

}  // namespace tollgate::edge
