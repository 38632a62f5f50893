#include "src/permissive_clients.h"

#include "tollgate/log.h"

namespace tollgate::edge {

void AllowAllAuthClient::Authenticate(std::string api_key, std::string client_ip,
                                      std::function<void(AuthResult)> done) {
  AuthResult result;
  result.principal.api_key_id = "anonymous";
  result.principal.user_id = "anonymous";
  result.principal.account_id = "anonymous";
  done(std::move(result));
}

void AllowAllQuotaClient::Admit(AdmitRequest request, std::function<void(AdmitResult)> done) {
  done(AdmitResult{});
}

void DiscardingBillingClient::Hold(HoldRequest request, std::function<void(HoldResult)> done) {
  done(HoldResult{});
}

void DiscardingBillingClient::Record(UsageRecord record) {
  records_.fetch_add(1, std::memory_order_relaxed);
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

}  // namespace tollgate::edge
