// The operator's view of users and keys: validates admin input, generates keys, writes through
// the repository and applies the change to the key cache, so it is live on this replica (and
// pushed to the edges watching it) before the call returns. Throws Error for bad input or
// a missing/duplicate object; other exceptions mean the database failed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/auth/key_cache.h"
#include "tollgate/auth/repository.h"
#include "tollgate/clock.h"

namespace tollgate::auth {

struct NewKeyRequest {
  int64_t user_id = 0;
  std::string name;
  int64_t expires_at = 0;   // unix seconds; 0: never
  int64_t ttl_seconds = 0;  // alternative to expires_at
  std::vector<std::string> allowed_models;
  std::vector<std::string> allowed_cidrs;
  std::string limits_ref;
  bool store_bodies = false;
};

struct CreatedKey {
  std::string api_key;  // the only copy: shown once
  ApiKeyRecord record;
};

class AuthAdmin final {
 public:
  AuthAdmin(AuthRepository& repo, KeyCache& cache, const Clock& clock)
      : repo_(repo), cache_(cache), clock_(clock) {}

  // Each change is audited with `audit` (actor, action, target, details) in its transaction.
  UserRecord CreateUser(NewUser user, const AuditEntry& audit);
  UserRecord UpdateUser(int64_t id, UserPatch patch, const AuditEntry& audit);
  std::vector<UserRecord> ListUsers();

  // The audit entry gets the key's display prefix; the key itself is never in it.
  CreatedKey CreateApiKey(NewKeyRequest request, const AuditEntry& audit);
  ApiKeyRecord UpdateApiKey(int64_t id, ApiKeyPatch patch, const AuditEntry& audit);
  ApiKeyRecord RevokeApiKey(int64_t id, const AuditEntry& audit);
  std::vector<ApiKeyRecord> ListApiKeys(int64_t user_id, bool include_revoked);

  // Newest first; `limit` 0 is 100.
  std::vector<AuditEntry> ListAuditLog(int32_t limit);

 private:
  AuthRepository& repo_;
  KeyCache& cache_;
  const Clock& clock_;
};

}  // namespace tollgate::auth
