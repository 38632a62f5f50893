// Where users and API keys are stored. Keys arrive here already hashed: the repository never
// sees a key. Expected failures throw Error (ErrorCode kNotFound, kAlreadyExists,
// kInvalidRequest, kFailedPrecondition); anything else (the database is down) throws another
// std::exception.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/audit.h"
#include "tollgate/auth/policy.h"
#include "tollgate/errors.h"

namespace tollgate::auth {

struct UserRecord {
  int64_t id = 0;
  std::string name;
  UserStatus status = UserStatus::kActive;
  std::map<std::string, std::string> metadata;
  int64_t created = 0;  // unix seconds
  bool operator==(const UserRecord&) const = default;
};

struct NewUser {
  std::string name;
  UserStatus status = UserStatus::kActive;
  std::map<std::string, std::string> metadata;
};

struct UserPatch {
  std::optional<std::string> name;
  std::optional<UserStatus> status;
  std::map<std::string, std::string> set_metadata;
  std::vector<std::string> remove_metadata;
};

struct ApiKeyRecord {
  int64_t id = 0;
  int64_t user_id = 0;
  std::string name;
  std::string key_hash;  // SHA-256, 32 raw bytes
  std::string display_prefix;
  KeyStatus status = KeyStatus::kActive;
  int64_t expires_at = 0;  // unix seconds; 0: never
  std::vector<std::string> allowed_models;
  std::vector<std::string> allowed_cidrs;  // canonical (PostgreSQL cidr text)
  std::string limits_ref;
  bool store_bodies = false;                     // opt-in: bodies kept with usage records
  int64_t last_used_at = 0;                      // unix seconds; 0: never
  int64_t created = 0;                           // unix seconds
  int64_t version = 0;                           // bumped by every change of the key or its user
  UserStatus user_status = UserStatus::kActive;  // the owner's, joined
  bool operator==(const ApiKeyRecord&) const = default;
};

struct NewApiKey {
  int64_t user_id = 0;
  std::string name;
  std::string key_hash;
  std::string display_prefix;
  int64_t expires_at = 0;
  std::vector<std::string> allowed_models;
  std::vector<std::string> allowed_cidrs;
  std::string limits_ref;
  bool store_bodies = false;
};

struct ApiKeyPatch {
  std::optional<std::string> name;
  std::optional<KeyStatus> status;  // kRevoked only through Revoke
  std::optional<int64_t> expires_at;
  std::optional<std::vector<std::string>> allowed_models;
  std::optional<std::vector<std::string>> allowed_cidrs;
  std::optional<std::string> limits_ref;
  std::optional<bool> store_bodies;
};

// Keys with their owner's status, as of one database snapshot.
struct KeyLoad {
  std::vector<ApiKeyRecord> keys;
  int64_t db_now_us = 0;  // the snapshot's now(), unix microseconds: the next `since`
};

class AuthRepository {
 public:
  virtual ~AuthRepository() = default;

  // Every change writes `audit` to the audit log in its own transaction (a creation first sets
  // the entry's target to the new object: "user:12", "api_key:34"); a failed change writes none.
  virtual UserRecord CreateUser(const NewUser& user, const AuditEntry& audit) = 0;
  // Also bumps the version of every key of the user: their principals changed.
  virtual UserRecord UpdateUser(int64_t id, const UserPatch& patch, const AuditEntry& audit) = 0;
  virtual std::vector<UserRecord> ListUsers() = 0;

  virtual ApiKeyRecord CreateApiKey(const NewApiKey& key, const AuditEntry& audit) = 0;
  // kFailedPrecondition for a revoked key.
  virtual ApiKeyRecord UpdateApiKey(int64_t id, const ApiKeyPatch& patch,
                                    const AuditEntry& audit) = 0;
  // Idempotent: revoking a revoked key returns it unchanged (and is audited again).
  virtual ApiKeyRecord RevokeApiKey(int64_t id, const AuditEntry& audit) = 0;
  // user_id 0: every user's keys.
  virtual std::vector<ApiKeyRecord> ListApiKeys(int64_t user_id, bool include_revoked) = 0;
  virtual std::vector<ApiKeyRecord> KeysOfUser(int64_t user_id) = 0;

  // Every key when `changed_since_us` is empty, else the keys changed (or whose user changed)
  // after it (unix microseconds).
  virtual KeyLoad LoadKeys(std::optional<int64_t> changed_since_us) = 0;
  // Moves last_used_at forward (never back) for each (key id, unix seconds); does not count as
  // a change of the key.
  virtual void RecordLastUsed(const std::map<int64_t, int64_t>& last_used) = 0;

  // The newest `limit` audit entries, newest first.
  virtual std::vector<AuditEntry> ListAudit(int32_t limit) = 0;
};

}  // namespace tollgate::auth
