#include "tollgate/router/pg_repository.h"

#include "tollgate/audit_pg.h"
#include "tollgate/pg.h"

namespace tollgate::router {
namespace {

constexpr const char* kProviderColumns =
    "id, name, type, base_url, api_version, enabled, EXTRACT(EPOCH FROM created_at)::BIGINT";
constexpr const char* kKeyColumns =
    "id, provider_id, name, secret_ciphertext, secret_nonce, key_prefix, weight, enabled, "
    "EXTRACT(EPOCH FROM created_at)::BIGINT";
constexpr const char* kModelColumns =
    "name, owned_by, EXTRACT(EPOCH FROM created_at)::BIGINT, max_output_tokens, "
    "default_max_tokens";

Provider ProviderFrom(const pqxx::row& row) {
  Provider p;
  p.id = row[0].as<int64_t>();
  p.name = row[1].as<std::string>();
  // The CHECK constraint keeps `type` to the three known names.
  p.type = ParseProviderType(row[2].as<std::string>()).value_or(ProviderType::kOpenAi);
  p.base_url = row[3].as<std::string>();
  p.api_version = row[4].as<std::string>();
  p.enabled = row[5].as<bool>();
  p.created = row[6].as<int64_t>();
  return p;
}

UpstreamKeyRecord KeyFrom(const pqxx::row& row) {
  UpstreamKeyRecord k;
  k.id = row[0].as<int64_t>();
  k.provider_id = row[1].as<int64_t>();
  k.name = row[2].as<std::string>();
  k.secret.ciphertext = pqxx::binarystring(row[3]).str();
  k.secret.nonce = pqxx::binarystring(row[4]).str();
  k.key_prefix = row[5].as<std::string>();
  k.weight = row[6].as<int32_t>();
  k.enabled = row[7].as<bool>();
  k.created = row[8].as<int64_t>();
  return k;
}

ModelRecord ModelFrom(const pqxx::row& row) {
  return {row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<int64_t>(),
          row[3].as<int64_t>(), row[4].as<int64_t>()};
}

pqxx::binarystring Bytes(const std::string& s) { return pqxx::binarystring(s.data(), s.size()); }

std::string Sql(const char* head, const char* columns, const char* tail = "") {
  return std::string(head) + columns + tail;
}

AuditEntry Targeted(AuditEntry entry, std::string target) {
  entry.target = std::move(target);
  return entry;
}

}  // namespace

Catalogue PgRouterRepository::LoadCatalogue() {
  return pool_.Run([](pqxx::connection& conn) {
    // One snapshot: a key never shows up without its provider, a route without its model.
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(conn);
    Catalogue c;
    for (const auto& row : tx.exec(Sql("SELECT ", kProviderColumns, " FROM providers ORDER BY id")))
      c.providers.push_back(ProviderFrom(row));
    for (const auto& row : tx.exec(Sql("SELECT ", kKeyColumns, " FROM upstream_keys ORDER BY id")))
      c.keys.push_back(KeyFrom(row));
    for (const auto& row : tx.exec(Sql("SELECT ", kModelColumns, " FROM models ORDER BY name")))
      c.models.push_back(ModelFrom(row));
    for (const auto& row : tx.exec("SELECT model, provider_id, upstream_model FROM model_routes "
                                   "ORDER BY model, provider_id"))
      c.routes.push_back(
          {row[0].as<std::string>(), row[1].as<int64_t>(), row[2].as<std::string>()});
    for (const auto& row : tx.exec("SELECT alias, model FROM model_aliases ORDER BY alias"))
      c.aliases.push_back({row[0].as<std::string>(), row[1].as<std::string>()});
    tx.commit();
    return c;
  });
}

Provider PgRouterRepository::CreateProvider(const NewProvider& p, const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto row = tx.exec_params1(
          Sql("INSERT INTO providers (name, type, base_url, api_version, enabled) "
              "VALUES ($1, $2, $3, $4, $5) RETURNING ",
              kProviderColumns),
          p.name, std::string(ProviderTypeName(p.type)), p.base_url, p.api_version, p.enabled);
      Provider created = ProviderFrom(row);
      WriteAudit(tx, Targeted(audit, "provider:" + std::to_string(created.id)));
      tx.commit();
      return created;
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists, "provider '" + p.name + "' already exists");
    }
  });
}

Provider PgRouterRepository::UpdateProvider(int64_t id, const ProviderPatch& patch,
                                            const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    // libpqxx 6 has no optional parameters: each field travels as (set?, value).
    auto rows = tx.exec_params(Sql("UPDATE providers SET "
                                   "enabled = CASE WHEN $2 THEN $3::BOOLEAN ELSE enabled END, "
                                   "base_url = CASE WHEN $4 THEN $5 ELSE base_url END, "
                                   "api_version = CASE WHEN $6 THEN $7 ELSE api_version END "
                                   "WHERE id = $1 RETURNING ",
                                   kProviderColumns),
                               id, patch.enabled.has_value(), patch.enabled.value_or(false),
                               patch.base_url.has_value(), patch.base_url.value_or(""),
                               patch.api_version.has_value(), patch.api_version.value_or(""));
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "provider " + std::to_string(id) + " not found");
    WriteAudit(tx, audit);
    tx.commit();
    return ProviderFrom(rows[0]);
  });
}

std::vector<Provider> PgRouterRepository::ListProviders() {
  return pool_.Run([](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<Provider> out;
    for (const auto& row : tx.exec(Sql("SELECT ", kProviderColumns, " FROM providers ORDER BY id")))
      out.push_back(ProviderFrom(row));
    return out;
  });
}

UpstreamKeyRecord PgRouterRepository::CreateUpstreamKey(const NewUpstreamKey& k,
                                                        const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto row = tx.exec_params1(
          Sql("INSERT INTO upstream_keys (provider_id, name, secret_ciphertext, secret_nonce, "
              "key_prefix, weight, enabled) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
              kKeyColumns),
          k.provider_id, k.name, Bytes(k.secret.ciphertext), Bytes(k.secret.nonce), k.key_prefix,
          k.weight, k.enabled);
      UpstreamKeyRecord created = KeyFrom(row);
      WriteAudit(tx, Targeted(audit, "upstream_key:" + std::to_string(created.id)));
      tx.commit();
      return created;
    } catch (const pqxx::foreign_key_violation&) {
      throw Error(ErrorCode::kNotFound, "provider " + std::to_string(k.provider_id) + " not found");
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists, "provider " + std::to_string(k.provider_id) +
                                                 " already has a key named '" + k.name + "'");
    }
  });
}

UpstreamKeyRecord PgRouterRepository::UpdateUpstreamKey(int64_t id, const UpstreamKeyPatch& patch,
                                                        const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    const bool rotate = patch.secret.has_value();
    const SealedSecret none;
    const SealedSecret& secret = rotate ? *patch.secret : none;
    auto rows = tx.exec_params(
        Sql("UPDATE upstream_keys SET "
            "weight = CASE WHEN $2 THEN $3::INTEGER ELSE weight END, "
            "enabled = CASE WHEN $4 THEN $5::BOOLEAN ELSE enabled END, "
            "secret_ciphertext = CASE WHEN $6 THEN $7::BYTEA ELSE secret_ciphertext END, "
            "secret_nonce = CASE WHEN $6 THEN $8::BYTEA ELSE secret_nonce END, "
            "key_prefix = CASE WHEN $6 THEN $9 ELSE key_prefix END "
            "WHERE id = $1 RETURNING ",
            kKeyColumns),
        id, patch.weight.has_value(), patch.weight.value_or(1), patch.enabled.has_value(),
        patch.enabled.value_or(false), rotate, Bytes(secret.ciphertext), Bytes(secret.nonce),
        patch.key_prefix.value_or(""));
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "upstream key " + std::to_string(id) + " not found");
    WriteAudit(tx, audit);
    tx.commit();
    return KeyFrom(rows[0]);
  });
}

void PgRouterRepository::DeleteUpstreamKey(int64_t id, const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params("DELETE FROM upstream_keys WHERE id = $1 RETURNING id", id);
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "upstream key " + std::to_string(id) + " not found");
    WriteAudit(tx, audit);
    tx.commit();
  });
}

std::vector<UpstreamKeyRecord> PgRouterRepository::ListUpstreamKeys(int64_t provider_id) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<UpstreamKeyRecord> out;
    for (const auto& row : tx.exec_params(Sql("SELECT ", kKeyColumns,
                                              " FROM upstream_keys WHERE $1::BIGINT = 0 OR "
                                              "provider_id = $1::BIGINT ORDER BY id"),
                                          provider_id))
      out.push_back(KeyFrom(row));
    return out;
  });
}

ModelRecord PgRouterRepository::CreateModel(const ModelRecord& model, const AuditEntry& audit) {
  const std::string& name = model.name;
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      // A public name is either a model or an alias, never both.
      auto rows = tx.exec_params(
          Sql("INSERT INTO models (name, owned_by, max_output_tokens, default_max_tokens) "
              "SELECT $1::TEXT, $2::TEXT, $3, $4 WHERE NOT EXISTS "
              "(SELECT 1 FROM model_aliases WHERE alias = $1) RETURNING ",
              kModelColumns),
          name, model.owned_by, model.max_output_tokens, model.default_max_tokens);
      if (rows.empty())
        throw Error(ErrorCode::kAlreadyExists, "'" + name + "' is already an alias");
      WriteAudit(tx, audit);
      tx.commit();
      return ModelFrom(rows[0]);
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists, "model '" + name + "' already exists");
    }
  });
}

ModelRecord PgRouterRepository::SetModelLimits(const std::string& name, int64_t max_output_tokens,
                                               int64_t default_max_tokens,
                                               const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params(Sql("UPDATE models SET max_output_tokens = $2, "
                                   "default_max_tokens = $3 WHERE name = $1 RETURNING ",
                                   kModelColumns),
                               name, max_output_tokens, default_max_tokens);
    if (rows.empty()) throw Error(ErrorCode::kNotFound, "model '" + name + "' not found");
    WriteAudit(tx, audit);
    tx.commit();
    return ModelFrom(rows[0]);
  });
}

void PgRouterRepository::DeleteModel(const std::string& name, const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params("DELETE FROM models WHERE name = $1 RETURNING name", name);
    if (rows.empty()) throw Error(ErrorCode::kNotFound, "model '" + name + "' not found");
    WriteAudit(tx, audit);
    tx.commit();
  });
}

ModelRoute PgRouterRepository::SetModelRoute(const ModelRoute& route, const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      tx.exec_params(
          "INSERT INTO model_routes (model, provider_id, upstream_model) VALUES ($1, $2, $3) "
          "ON CONFLICT (model, provider_id) DO UPDATE SET upstream_model = EXCLUDED.upstream_model",
          route.model, route.provider_id, route.upstream_model);
      WriteAudit(tx, audit);
      tx.commit();
      return route;
    } catch (const pqxx::foreign_key_violation&) {
      throw Error(ErrorCode::kNotFound, "model '" + route.model + "' or provider " +
                                            std::to_string(route.provider_id) + " not found");
    }
  });
}

void PgRouterRepository::DeleteModelRoute(const std::string& model, int64_t provider_id,
                                          const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params(
        "DELETE FROM model_routes WHERE model = $1 AND provider_id = $2 RETURNING model", model,
        provider_id);
    if (rows.empty())
      throw Error(ErrorCode::kNotFound,
                  "no route from model '" + model + "' to provider " + std::to_string(provider_id));
    WriteAudit(tx, audit);
    tx.commit();
  });
}

void PgRouterRepository::SetAlias(const std::string& alias, const std::string& model,
                                  const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto rows = tx.exec_params(
          "INSERT INTO model_aliases (alias, model) SELECT $1::TEXT, $2::TEXT WHERE NOT EXISTS "
          "(SELECT 1 FROM models WHERE name = $1) "
          "ON CONFLICT (alias) DO UPDATE SET model = EXCLUDED.model RETURNING alias",
          alias, model);
      if (rows.empty())
        throw Error(ErrorCode::kAlreadyExists, "'" + alias + "' is a model, not an alias");
      WriteAudit(tx, audit);
      tx.commit();
    } catch (const pqxx::foreign_key_violation&) {
      throw Error(ErrorCode::kNotFound, "model '" + model + "' not found");
    }
  });
}

void PgRouterRepository::DeleteAlias(const std::string& alias, const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params("DELETE FROM model_aliases WHERE alias = $1 RETURNING alias", alias);
    if (rows.empty()) throw Error(ErrorCode::kNotFound, "alias '" + alias + "' not found");
    WriteAudit(tx, audit);
    tx.commit();
  });
}

std::vector<AuditEntry> PgRouterRepository::ListAudit(int32_t limit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return ::tollgate::ListAudit(tx, limit);
  });
}

}  // namespace tollgate::router
