#include "tollgate/auth/pg_repository.h"

#include <nlohmann/json.hpp>

#include "tollgate/audit_pg.h"
#include "tollgate/pg.h"

namespace tollgate::auth {
namespace {

using Json = nlohmann::json;

constexpr const char* kUserColumns =
    "id, name, status, metadata::TEXT, EXTRACT(EPOCH FROM created_at)::BIGINT";

// Over `k` (api_keys or a CTE of its rows) joined with its user `u`. Arrays travel as JSON
// text: libpqxx 6 has no array parameters, and JSON is unambiguous to parse.
constexpr const char* kKeyColumns =
    "k.id, k.user_id, k.name, k.key_hash, k.display_prefix, k.status, "
    "COALESCE(EXTRACT(EPOCH FROM k.expires_at)::BIGINT, 0), "
    "array_to_json(k.allowed_models)::TEXT, array_to_json(k.allowed_cidrs::TEXT[])::TEXT, "
    "k.limits_ref, COALESCE(EXTRACT(EPOCH FROM k.last_used_at)::BIGINT, 0), "
    "EXTRACT(EPOCH FROM k.created_at)::BIGINT, k.version, u.status, k.store_bodies";

std::string KeySelect(const std::string& from) {
  return std::string("SELECT ") + kKeyColumns + " FROM " + from +
         " k JOIN users u ON u.id = k.user_id";
}

std::vector<std::string> StringArray(const pqxx::field& f) {
  std::vector<std::string> out;
  if (f.is_null()) return out;
  for (const auto& item : Json::parse(f.c_str()))
    if (item.is_string()) out.push_back(item.get<std::string>());
  return out;
}

std::string JsonArray(const std::vector<std::string>& items) {
  return Json(items).dump(-1, ' ', false, Json::error_handler_t::replace);
}

UserRecord UserFrom(const pqxx::row& row) {
  UserRecord u;
  u.id = row[0].as<int64_t>();
  u.name = row[1].as<std::string>();
  u.status = ParseUserStatus(row[2].as<std::string>()).value_or(UserStatus::kDisabled);
  const Json metadata = Json::parse(row[3].c_str());
  for (auto it = metadata.begin(); it != metadata.end(); ++it)
    u.metadata[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
  u.created = row[4].as<int64_t>();
  return u;
}

ApiKeyRecord KeyFrom(const pqxx::row& row) {
  ApiKeyRecord k;
  k.id = row[0].as<int64_t>();
  k.user_id = row[1].as<int64_t>();
  k.name = row[2].as<std::string>();
  k.key_hash = pqxx::binarystring(row[3]).str();
  k.display_prefix = row[4].as<std::string>();
  // The CHECK constraint keeps status to the three names; an unknown one fails closed.
  k.status = ParseKeyStatus(row[5].as<std::string>()).value_or(KeyStatus::kRevoked);
  k.expires_at = row[6].as<int64_t>();
  k.allowed_models = StringArray(row[7]);
  k.allowed_cidrs = StringArray(row[8]);
  k.limits_ref = row[9].as<std::string>();
  k.last_used_at = row[10].as<int64_t>();
  k.created = row[11].as<int64_t>();
  k.version = row[12].as<int64_t>();
  k.user_status = ParseUserStatus(row[13].as<std::string>()).value_or(UserStatus::kDisabled);
  k.store_bodies = row[14].as<bool>();
  return k;
}

std::string Metadata(const std::map<std::string, std::string>& m) {
  return Json(m).dump(-1, ' ', false, Json::error_handler_t::replace);
}

[[noreturn]] void KeyNotFound(int64_t id) {
  throw Error(ErrorCode::kNotFound, "API key " + std::to_string(id) + " not found");
}

ApiKeyRecord ReadKey(pqxx::transaction_base& tx, int64_t id) {
  auto rows = tx.exec_params(KeySelect("api_keys") + " WHERE k.id = $1", id);
  if (rows.empty()) KeyNotFound(id);
  return KeyFrom(rows[0]);
}

}  // namespace

UserRecord PgAuthRepository::CreateUser(const NewUser& user, const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto row = tx.exec_params1(std::string("INSERT INTO users (name, status, metadata) VALUES "
                                             "($1, $2, $3::JSONB) RETURNING ") +
                                     kUserColumns,
                                 user.name, std::string(UserStatusName(user.status)),
                                 Metadata(user.metadata));
      UserRecord created = UserFrom(row);
      AuditEntry entry = audit;
      entry.target = "user:" + std::to_string(created.id);
      WriteAudit(tx, entry);
      tx.commit();
      return created;
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists, "user '" + user.name + "' already exists");
    }
  });
}

UserRecord PgAuthRepository::UpdateUser(int64_t id, const UserPatch& patch,
                                        const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      // libpqxx 6 has no optional parameters: each field travels as (set?, value).
      auto rows = tx.exec_params(
          std::string("UPDATE users SET "
                      "name = CASE WHEN $2 THEN $3 ELSE name END, "
                      "status = CASE WHEN $4 THEN $5 ELSE status END, "
                      "metadata = (metadata || $6::JSONB) - tg_text_array($7::JSONB), "
                      "updated_at = now() WHERE id = $1 RETURNING ") +
              kUserColumns,
          id, patch.name.has_value(), patch.name.value_or(""), patch.status.has_value(),
          std::string(UserStatusName(patch.status.value_or(UserStatus::kActive))),
          Metadata(patch.set_metadata), JsonArray(patch.remove_metadata));
      if (rows.empty())
        throw Error(ErrorCode::kNotFound, "user " + std::to_string(id) + " not found");
      if (patch.status)
        tx.exec_params(
            "UPDATE api_keys SET version = version + 1, updated_at = now() WHERE user_id = $1", id);
      WriteAudit(tx, audit);
      tx.commit();
      return UserFrom(rows[0]);
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists,
                  "user '" + patch.name.value_or("") + "' already exists");
    }
  });
}

std::vector<UserRecord> PgAuthRepository::ListUsers() {
  return pool_.Run([](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<UserRecord> out;
    for (const auto& row :
         tx.exec(std::string("SELECT ") + kUserColumns + " FROM users ORDER BY id"))
      out.push_back(UserFrom(row));
    return out;
  });
}

ApiKeyRecord PgAuthRepository::CreateApiKey(const NewApiKey& key, const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto row = tx.exec_params1(
          "WITH k AS (INSERT INTO api_keys (user_id, name, key_hash, display_prefix, expires_at, "
          "allowed_models, allowed_cidrs, limits_ref, store_bodies) VALUES ($1, $2, $3, $4, "
          "CASE WHEN $5::BIGINT = 0 THEN NULL ELSE to_timestamp($5::BIGINT) END, "
          "tg_text_array($6::JSONB), tg_text_array($7::JSONB)::CIDR[], $8, $9) RETURNING *) " +
              KeySelect("k"),
          key.user_id, key.name, pqxx::binarystring(key.key_hash.data(), key.key_hash.size()),
          key.display_prefix, key.expires_at, JsonArray(key.allowed_models),
          JsonArray(key.allowed_cidrs), key.limits_ref, key.store_bodies);
      ApiKeyRecord created = KeyFrom(row);
      AuditEntry entry = audit;
      entry.target = "api_key:" + std::to_string(created.id);
      WriteAudit(tx, entry);
      tx.commit();
      return created;
    } catch (const pqxx::foreign_key_violation&) {
      throw Error(ErrorCode::kNotFound, "user " + std::to_string(key.user_id) + " not found");
    } catch (const pqxx::unique_violation&) {
      // Two 256-bit random keys with one hash: not going to happen, but never store a duplicate.
      throw Error(ErrorCode::kAlreadyExists, "a key with this hash already exists; try again");
    } catch (const pqxx::data_exception&) {
      throw Error(ErrorCode::kInvalidRequest, "allowed_cidrs holds an invalid network");
    }
  });
}

ApiKeyRecord PgAuthRepository::UpdateApiKey(int64_t id, const ApiKeyPatch& patch,
                                            const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto current = tx.exec_params("SELECT status FROM api_keys WHERE id = $1 FOR UPDATE", id);
    if (current.empty()) KeyNotFound(id);
    if (current[0][0].as<std::string>() == "revoked")
      throw Error(ErrorCode::kFailedPrecondition,
                  "API key " + std::to_string(id) + " is revoked; a revoked key cannot change");
    try {
      tx.exec_params(
          "UPDATE api_keys SET "
          "name = CASE WHEN $2 THEN $3 ELSE name END, "
          "status = CASE WHEN $4 THEN $5 ELSE status END, "
          "expires_at = CASE WHEN $6 THEN (CASE WHEN $7::BIGINT = 0 THEN NULL "
          "  ELSE to_timestamp($7::BIGINT) END) ELSE expires_at END, "
          "allowed_models = CASE WHEN $8 THEN tg_text_array($9::JSONB) ELSE allowed_models END, "
          "allowed_cidrs = CASE WHEN $10 THEN tg_text_array($11::JSONB)::CIDR[] "
          "  ELSE allowed_cidrs END, "
          "limits_ref = CASE WHEN $12 THEN $13 ELSE limits_ref END, "
          "store_bodies = CASE WHEN $14 THEN $15 ELSE store_bodies END, "
          "version = version + 1, updated_at = now() WHERE id = $1",
          id, patch.name.has_value(), patch.name.value_or(""), patch.status.has_value(),
          std::string(KeyStatusName(patch.status.value_or(KeyStatus::kActive))),
          patch.expires_at.has_value(), patch.expires_at.value_or(0),
          patch.allowed_models.has_value(),
          JsonArray(patch.allowed_models.value_or(std::vector<std::string>{})),
          patch.allowed_cidrs.has_value(),
          JsonArray(patch.allowed_cidrs.value_or(std::vector<std::string>{})),
          patch.limits_ref.has_value(), patch.limits_ref.value_or(""),
          patch.store_bodies.has_value(), patch.store_bodies.value_or(false));
    } catch (const pqxx::data_exception&) {
      throw Error(ErrorCode::kInvalidRequest, "allowed_cidrs holds an invalid network");
    }
    auto key = ReadKey(tx, id);
    WriteAudit(tx, audit);
    tx.commit();
    return key;
  });
}

ApiKeyRecord PgAuthRepository::RevokeApiKey(int64_t id, const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "UPDATE api_keys SET status = 'revoked', revoked_at = now(), version = version + 1, "
        "updated_at = now() WHERE id = $1 AND status <> 'revoked'",
        id);
    auto key = ReadKey(tx, id);
    WriteAudit(tx, audit);
    tx.commit();
    return key;
  });
}

std::vector<ApiKeyRecord> PgAuthRepository::ListApiKeys(int64_t user_id, bool include_revoked) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<ApiKeyRecord> out;
    for (const auto& row :
         tx.exec_params(KeySelect("api_keys") + " WHERE ($1::BIGINT = 0 OR k.user_id = $1::BIGINT) "
                                                "AND ($2 OR k.status <> 'revoked') ORDER BY k.id",
                        user_id, include_revoked))
      out.push_back(KeyFrom(row));
    return out;
  });
}

std::vector<ApiKeyRecord> PgAuthRepository::KeysOfUser(int64_t user_id) {
  return ListApiKeys(user_id, true);
}

KeyLoad PgAuthRepository::LoadKeys(std::optional<int64_t> changed_since_us) {
  return pool_.Run([&](pqxx::connection& conn) {
    // One snapshot: the rows and the now() that the next incremental load starts from.
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(conn);
    KeyLoad load;
    load.db_now_us =
        tx.exec1("SELECT (EXTRACT(EPOCH FROM now()) * 1000000)::BIGINT")[0].as<int64_t>();
    pqxx::result rows =
        changed_since_us
            ? tx.exec_params(KeySelect("api_keys") +
                                 " WHERE k.updated_at > to_timestamp($1::BIGINT / 1000000.0) "
                                 "ORDER BY k.id",
                             *changed_since_us)
            : tx.exec(KeySelect("api_keys") + " ORDER BY k.id");
    load.keys.reserve(rows.size());
    for (const auto& row : rows) load.keys.push_back(KeyFrom(row));
    tx.commit();
    return load;
  });
}

void PgAuthRepository::RecordLastUsed(const std::map<int64_t, int64_t>& last_used) {
  if (last_used.empty()) return;
  Json batch = Json::array();
  for (const auto& [id, at] : last_used) batch.push_back({{"id", id}, {"t", at}});
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    // One statement per batch, whatever its size; never moves a timestamp back.
    tx.exec_params(
        "UPDATE api_keys k SET last_used_at = to_timestamp(x.t) "
        "FROM jsonb_to_recordset($1::JSONB) AS x(id BIGINT, t BIGINT) "
        "WHERE k.id = x.id AND (k.last_used_at IS NULL OR k.last_used_at < to_timestamp(x.t))",
        batch.dump());
    tx.commit();
  });
}

std::vector<AuditEntry> PgAuthRepository::ListAudit(int32_t limit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return ::tollgate::ListAudit(tx, limit);
  });
}

}  // namespace tollgate::auth
