// AuthRepository on the auth service's own PostgreSQL database (migrations/).
#pragma once

#include "tollgate/auth/repository.h"

namespace tollgate {
class PgPool;
}  // namespace tollgate

namespace tollgate::auth {

class PgAuthRepository final : public AuthRepository {
 public:
  explicit PgAuthRepository(PgPool& pool) : pool_(pool) {}

  UserRecord CreateUser(const NewUser& user, const AuditEntry& audit) override;
  UserRecord UpdateUser(int64_t id, const UserPatch& patch, const AuditEntry& audit) override;
  std::vector<UserRecord> ListUsers() override;

  ApiKeyRecord CreateApiKey(const NewApiKey& key, const AuditEntry& audit) override;
  ApiKeyRecord UpdateApiKey(int64_t id, const ApiKeyPatch& patch, const AuditEntry& audit) override;
  ApiKeyRecord RevokeApiKey(int64_t id, const AuditEntry& audit) override;
  std::vector<ApiKeyRecord> ListApiKeys(int64_t user_id, bool include_revoked) override;
  std::vector<ApiKeyRecord> KeysOfUser(int64_t user_id) override;

  KeyLoad LoadKeys(std::optional<int64_t> changed_since_us) override;
  void RecordLastUsed(const std::map<int64_t, int64_t>& last_used) override;
  std::vector<AuditEntry> ListAudit(int32_t limit) override;

 private:
  PgPool& pool_;
};

}  // namespace tollgate::auth
