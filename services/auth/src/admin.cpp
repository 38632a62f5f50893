#include "tollgate/auth/admin.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>

namespace tollgate::auth {
namespace {

constexpr size_t kMaxName = 128;
constexpr size_t kMaxListItems = 256;
constexpr size_t kMaxMetadata = 64;
constexpr size_t kMaxMetadataKey = 64;
constexpr size_t kMaxMetadataValue = 1024;
constexpr int64_t kMaxTtlSeconds = int64_t{100} * 365 * 24 * 3600;

[[noreturn]] void Invalid(const std::string& message) {
  throw Error(ErrorCode::kInvalidRequest, message);
}

bool Printable(std::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

void CheckText(std::string_view what, std::string_view value, size_t max, bool required) {
  if (required && value.empty()) Invalid(std::string(what) + " is required");
  if (value.size() > max)
    Invalid(std::string(what) + " is longer than " + std::to_string(max) + " characters");
  if (!Printable(value)) Invalid(std::string(what) + " may not contain control characters");
}

void CheckLimitsRef(const std::string& ref) {
  CheckText("limits_ref", ref, kMaxName, false);
  for (unsigned char c : ref)
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':' || c == '/'))
      Invalid("limits_ref may only contain letters, digits and - _ . : /");
}

void CheckMetadata(const std::map<std::string, std::string>& metadata) {
  if (metadata.size() > kMaxMetadata)
    Invalid("at most " + std::to_string(kMaxMetadata) + " metadata entries");
  for (const auto& [k, v] : metadata) {
    CheckText("a metadata key", k, kMaxMetadataKey, true);
    CheckText("metadata '" + k + "'", v, kMaxMetadataValue, false);
  }
}

std::vector<std::string> Models(std::vector<std::string> models) {
  if (models.size() > kMaxListItems)
    Invalid("at most " + std::to_string(kMaxListItems) + " allowed_models");
  std::vector<std::string> out;
  for (auto& m : models) {
    if (!ValidModelPattern(m))
      Invalid("allowed_models entry '" + m.substr(0, 64) +
              "' must be 1 to 256 characters without spaces, commas or control characters");
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(std::move(m));
  }
  return out;
}

// Canonical text, as PostgreSQL's cidr prints it, so what is listed is what was meant.
std::vector<std::string> Networks(const std::vector<std::string>& cidrs) {
  if (cidrs.size() > kMaxListItems)
    Invalid("at most " + std::to_string(kMaxListItems) + " allowed_cidrs");
  std::vector<std::string> out;
  for (const auto& text : cidrs) {
    std::string error;
    auto cidr = ParseCidr(text, &error);
    if (!cidr) Invalid("allowed_cidrs: " + error);
    std::string canonical = FormatCidr(*cidr);
    if (std::find(out.begin(), out.end(), canonical) == out.end())
      out.push_back(std::move(canonical));
  }
  return out;
}

}  // namespace

UserRecord AuthAdmin::CreateUser(NewUser user, const AuditEntry& audit) {
  CheckText("name", user.name, kMaxName, true);
  CheckMetadata(user.metadata);
  return repo_.CreateUser(user, audit);
}

UserRecord AuthAdmin::UpdateUser(int64_t id, UserPatch patch, const AuditEntry& audit) {
  if (patch.name) CheckText("name", *patch.name, kMaxName, true);
  CheckMetadata(patch.set_metadata);
  for (const auto& k : patch.remove_metadata) {
    CheckText("a metadata key", k, kMaxMetadataKey, true);
    if (patch.set_metadata.count(k)) Invalid("metadata '" + k + "' is both set and removed");
  }
  UserRecord user = repo_.UpdateUser(id, patch, audit);
  // The user's status is part of each of its keys' principal: make them live here now. If this
  // read fails the change is committed anyway and the periodic refresh brings it in.
  if (patch.status) {
    try {
      cache_.Apply(repo_.KeysOfUser(id));
    } catch (const std::exception&) {
    }
  }
  return user;
}

std::vector<UserRecord> AuthAdmin::ListUsers() { return repo_.ListUsers(); }

CreatedKey AuthAdmin::CreateApiKey(NewKeyRequest request, const AuditEntry& audit) {
  if (request.user_id <= 0) Invalid("user_id is required");
  CheckText("name", request.name, kMaxName, false);
  CheckLimitsRef(request.limits_ref);
  if (request.expires_at != 0 && request.ttl_seconds != 0)
    Invalid("give expires_at or ttl_seconds, not both");
  if (request.ttl_seconds < 0 || request.ttl_seconds > kMaxTtlSeconds)
    Invalid("ttl_seconds must be between 1 and " + std::to_string(kMaxTtlSeconds));
  const int64_t now = clock_.UnixSeconds();
  int64_t expires_at = request.ttl_seconds > 0 ? now + request.ttl_seconds : request.expires_at;
  if (expires_at < 0 || (expires_at != 0 && expires_at <= now))
    Invalid("expires_at must be in the future");

  NewApiKey key;
  key.user_id = request.user_id;
  key.name = std::move(request.name);
  key.expires_at = expires_at;
  key.allowed_models = Models(std::move(request.allowed_models));
  key.allowed_cidrs = Networks(request.allowed_cidrs);
  key.limits_ref = std::move(request.limits_ref);
  key.store_bodies = request.store_bodies;

  CreatedKey created;
  created.api_key = GenerateApiKey();
  key.key_hash = HashApiKey(created.api_key);
  key.display_prefix = DisplayPrefix(created.api_key);
  AuditEntry entry = audit;
  entry.details = AuditDetailsWith(entry.details, "display_prefix", key.display_prefix);
  try {
    created.record = repo_.CreateApiKey(key, entry);
  } catch (...) {
    OPENSSL_cleanse(created.api_key.data(), created.api_key.size());
    throw;
  }
  cache_.Apply({created.record});
  return created;
}

ApiKeyRecord AuthAdmin::UpdateApiKey(int64_t id, ApiKeyPatch patch, const AuditEntry& audit) {
  if (patch.name) CheckText("name", *patch.name, kMaxName, false);
  if (patch.status == KeyStatus::kRevoked) Invalid("revoke a key with RevokeApiKey");
  if (patch.expires_at && *patch.expires_at < 0) Invalid("expires_at must be 0 or unix seconds");
  if (patch.allowed_models) patch.allowed_models = Models(std::move(*patch.allowed_models));
  if (patch.allowed_cidrs) patch.allowed_cidrs = Networks(*patch.allowed_cidrs);
  if (patch.limits_ref) CheckLimitsRef(*patch.limits_ref);
  ApiKeyRecord key = repo_.UpdateApiKey(id, patch, audit);
  cache_.Apply({key});
  return key;
}

ApiKeyRecord AuthAdmin::RevokeApiKey(int64_t id, const AuditEntry& audit) {
  ApiKeyRecord key = repo_.RevokeApiKey(id, audit);
  cache_.Apply({key});
  return key;
}

std::vector<ApiKeyRecord> AuthAdmin::ListApiKeys(int64_t user_id, bool include_revoked) {
  return repo_.ListApiKeys(user_id, include_revoked);
}

std::vector<AuditEntry> AuthAdmin::ListAuditLog(int32_t limit) {
  return repo_.ListAudit(AuditLimit(limit));
}

}  // namespace tollgate::auth
