// Fakes for tests that exercise something else (the HTTP surface, quota, routing): they admit
// everything and keep nothing, loudly named so nobody mistakes them for the real thing. Part of
// the test library tollgate_edge_testing, never of the edge itself.
#pragma once

#include "src/clients.h"

namespace tollgate::edge {

// Accepts any key, even none, as one anonymous principal.
class AllowAllAuthClient final : public AuthClient {
 public:
  void Authenticate(std::string api_key, std::string client_ip,
                    std::function<void(AuthResult)> done) override;
};

// Admits every request; reservations are empty and settlements go nowhere.
class AllowAllQuotaClient final : public QuotaClient {
 public:
  void Admit(AdmitRequest request, std::function<void(AdmitResult)> done) override;
  void Release(std::string reservation_id) override {}
  void Settle(const UsageRecord& record) override {}
};

// Grants every hold and drops usage records after a debug log line: nothing is billed. The
// caller's own account and usage are 503 (no billing service).
class DiscardingBillingClient final : public BillingClient {
 public:
  void Hold(HoldRequest request, std::function<void(HoldResult)> done) override;
  void Release(std::string hold_id) override {}
  void Record(UsageRecord record) override;
  void GetAccount(const Principal& principal, std::function<void(AccountResult)> done) override;
  void GetUsage(const Principal& principal, bool key_only, std::string from_day, std::string to_day,
                std::function<void(UsageResult)> done) override;
};

}  // namespace tollgate::edge
