// The audit log of admin actions. Every database-owning service keeps its own
// append-only `audit_log` table (same shape in each database; a trigger refuses
// UPDATE, DELETE and TRUNCATE) and writes one row in the transaction that makes
// each admin change, so a change is never without its row and a failed change
// leaves none. Logic headers may include this one: no database or gRPC types.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

namespace tollgate {

struct AuditEntry {
  int64_t id = 0;
  int64_t at_ms = 0;  // unix milliseconds; 0 when writing: the transaction's now()
  std::string actor;
  std::string action;   // snake_case: create_api_key, set_price, ...
  std::string target;   // "user:12", "api_key:34", "model:gpt-4o", ...
  std::string details;  // JSON object of the request's fields, secrets left out
};

// ListAuditLog's `limit`: 0 (or less) is 100, at most 10000.
inline int32_t AuditLimit(int32_t requested) {
  return requested <= 0 ? 100 : std::min<int32_t>(requested, 10000);
}

// `details` (a JSON object) with one more string field, e.g. what the service
// derived from the request (a key's display prefix, never its secret).
std::string AuditDetailsWith(const std::string& details, const std::string& key,
                             const std::string& value);

}  // namespace tollgate
