// Stand-ins for the auth, quota and billing services until their gRPC clients land (issues of
// their own). They admit everything and keep nothing, loudly named so nobody mistakes them for
// the real thing; module.cpp logs a warning when it selects them.
#pragma once

#include <atomic>

#include "src/clients.h"

namespace tollgate::edge {

// Accepts any key, even none, as one anonymous principal.
class AllowAllAuthClient final : public AuthClient {
 public:
  void Authenticate(std::string api_key, std::string client_ip,
                    std::function<void(AuthResult)> done) override;
};

// Admits every request; reservations are empty.
class AllowAllQuotaClient final : public QuotaClient {
 public:
  void Admit(AdmitRequest request, std::function<void(AdmitResult)> done) override;
  void Release(std::string reservation_id) override {}
};

// Grants every hold and drops usage records after a debug log line: nothing is billed.
class DiscardingBillingClient final : public BillingClient {
 public:
  void Hold(HoldRequest request, std::function<void(HoldResult)> done) override;
  void Release(std::string hold_id) override {}
  void Record(UsageRecord record) override;
  int64_t records() const { return records_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> records_{0};
};

}  // namespace tollgate::edge
