#include "tollgate/billing/pg_repository.h"

#include <algorithm>
#include <map>
#include <set>
#include <string_view>
#include <tuple>

#include <nlohmann/json.hpp>

#include "tollgate/audit_pg.h"
#include "tollgate/civil_date.h"
#include "tollgate/pg.h"

namespace tollgate::billing {
namespace {

// Unix milliseconds <-> TIMESTAMPTZ, exactly (no floating point on the way).
std::string Ts(const char* param) {
  return std::string("(TIMESTAMPTZ 'epoch' + ") + param + "::BIGINT * INTERVAL '1 millisecond')";
}
std::string Ms(const char* column) {
  return std::string("(EXTRACT(EPOCH FROM ") + column + ") * 1000)::BIGINT";
}

const std::string kPriceColumns =
    "id, model, provider, input_micros_per_mtok, output_micros_per_mtok, "
    "cached_input_micros_per_mtok, " +
    Ms("effective_from") +
    // NULL (a price set before cache writes had their own): the input price.
    ", COALESCE(cache_write_micros_per_mtok, input_micros_per_mtok), image_prices::TEXT, "
    "audio_micros_per_minute, micros_per_mchar";

PriceRecord PriceFrom(const pqxx::row& row) {
  PriceRecord p;
  p.id = row[0].as<int64_t>();
  p.model = row[1].as<std::string>();
  p.provider = row[2].as<std::string>();
  p.rates.input_micros_per_mtok = row[3].as<int64_t>();
  p.rates.output_micros_per_mtok = row[4].as<int64_t>();
  p.rates.cached_input_micros_per_mtok = row[5].as<int64_t>();
  p.effective_from_ms = row[6].as<int64_t>();
  p.rates.cache_write_micros_per_mtok = row[7].as<int64_t>();
  auto images = nlohmann::json::parse(row[8].as<std::string>(), nullptr, false);
  if (images.is_array())
    for (const auto& image : images)
      if (image.is_object())
        p.rates.images.push_back({image.value("size", ""), image.value("quality", ""),
                                  image.value("micros_per_image", int64_t{0})});
  p.rates.audio_micros_per_minute = row[9].as<int64_t>();
  p.rates.micros_per_mchar = row[10].as<int64_t>();
  return p;
}

std::vector<PriceRecord> LoadPrices(pqxx::transaction_base& tx, const std::string& model) {
  std::vector<PriceRecord> out;
  for (const auto& row : tx.exec_params(
           "SELECT " + kPriceColumns + " FROM prices WHERE model = $1 ORDER BY effective_from, id",
           model))
    out.push_back(PriceFrom(row));
  return out;
}

int64_t LoadMultiplier(pqxx::transaction_base& tx, int64_t user_id) {
  auto rows = tx.exec_params("SELECT multiplier_ppm FROM multipliers WHERE user_id = $1", user_id);
  return rows.empty() ? kMultiplierOne : rows[0][0].as<int64_t>();
}

std::map<std::string, int64_t> LoadTierMultipliers(pqxx::transaction_base& tx) {
  std::map<std::string, int64_t> out;
  for (const auto& row : tx.exec("SELECT tier, multiplier_ppm FROM service_tier_multipliers"))
    out[row[0].as<std::string>()] = row[1].as<int64_t>();
  return out;
}

struct DailyKey {
  int64_t day;
  int64_t user_id;
  int64_t api_key_id;
  std::string model;
  bool operator<(const DailyKey& o) const {
    return std::tie(day, user_id, api_key_id, model) <
           std::tie(o.day, o.user_id, o.api_key_id, o.model);
  }
};

struct DailySum {
  int64_t requests = 0;
  int64_t prompt = 0;
  int64_t completion = 0;
  int64_t cached = 0;
  int64_t cost = 0;
  int64_t cache_write = 0;
};

const char* DimensionColumn(Dimension d) {
  switch (d) {
    case Dimension::kUser:
      return "user_id";
    case Dimension::kKey:
      return "api_key_id";
    case Dimension::kModel:
      return "model";
    case Dimension::kDay:
      return "day";
  }
  return "user_id";
}

// The statements of Ingest: fixed text, prepared once per connection (tollgate/pg.h), so a batch
// costs PostgreSQL no parsing or planning. Rows travel as one array per column.
const PgStatement kIngestPrices{
    "billing_ingest_prices",
    "SELECT " + kPriceColumns +
        " FROM prices WHERE model = ANY($1::TEXT[]) ORDER BY effective_from, id"};
const PgStatement kIngestMultipliers{
    "billing_ingest_multipliers",
    "SELECT user_id, multiplier_ppm FROM multipliers WHERE user_id = ANY($1::BIGINT[])"};
const PgStatement kIngestTiers{"billing_ingest_tiers",
                               "SELECT tier, multiplier_ppm FROM service_tier_multipliers"};

const std::vector<const char*> kRecordCasts = {
    "TEXT",    "BIGINT", "BIGINT",  "TEXT",    "TEXT",   "BIGINT", "TEXT",    "BIGINT",
    "BIGINT",  "BIGINT", "BIGINT",  "BIGINT",  "BIGINT", "BIGINT", "BOOLEAN", "BOOLEAN",
    "INTEGER", "BIGINT", "BOOLEAN", "INTEGER", "TEXT",   "BIGINT", "BIGINT",  "TEXT",
    "BIGINT",  "BIGINT", "TEXT",    "BIGINT",  "TEXT",   "TEXT",   "BIGINT",  "BIGINT"};

// `skip_delivered`: ON CONFLICT DO NOTHING, returning the request ids stored.
std::string InsertRecordsSql(bool skip_delivered) {
  return "INSERT INTO usage_records (request_id, user_id, api_key_id, model, "
         "upstream_model, upstream_key_id, provider, hold_id, prompt_tokens, "
         "completion_tokens, cached_tokens, cost_micros, price_id, multiplier_ppm, "
         "usage_estimated, streamed, status, latency_ms, client_disconnected, attempts, "
         "client_ip, started_at, finished_at, service_tier, service_tier_multiplier_ppm, "
         "cache_write_tokens, endpoint_kind, images, image_size, image_quality, "
         "audio_milliseconds, characters) "
         "SELECT request_id, user_id, api_key_id, model, upstream_model, upstream_key_id, "
         "provider, hold_id, prompt_tokens, completion_tokens, cached_tokens, cost_micros, "
         "NULLIF(price_id, 0), multiplier_ppm, usage_estimated, streamed, status, "
         "latency_ms, client_disconnected, attempts, client_ip, " +
         Ts("started_ms") + ", " + Ts("finished_ms") +
         ", service_tier, tier_multiplier_ppm, cache_write_tokens, endpoint_kind, images, "
         "image_size, image_quality, audio_milliseconds, characters FROM " +
         PgUnnest(kRecordCasts, {"request_id",
                                 "user_id",
                                 "api_key_id",
                                 "model",
                                 "upstream_model",
                                 "upstream_key_id",
                                 "provider",
                                 "hold_id",
                                 "prompt_tokens",
                                 "completion_tokens",
                                 "cached_tokens",
                                 "cost_micros",
                                 "price_id",
                                 "multiplier_ppm",
                                 "usage_estimated",
                                 "streamed",
                                 "status",
                                 "latency_ms",
                                 "client_disconnected",
                                 "attempts",
                                 "client_ip",
                                 "started_ms",
                                 "finished_ms",
                                 "service_tier",
                                 "tier_multiplier_ppm",
                                 "cache_write_tokens",
                                 "endpoint_kind",
                                 "images",
                                 "image_size",
                                 "image_quality",
                                 "audio_milliseconds",
                                 "characters"}) +
         (skip_delivered ? " ON CONFLICT (request_id) DO NOTHING RETURNING request_id" : "");
}
const PgStatement kInsertRecords{"billing_insert_records", InsertRecordsSql(false)};
const PgStatement kInsertNewRecords{"billing_insert_new_records", InsertRecordsSql(true)};

const PgStatement kChargeAccounts{
    "billing_charge_accounts",
    "INSERT INTO accounts (user_id, balance_micros, version) SELECT u, b, 1 FROM " +
        PgUnnest({"BIGINT", "BIGINT"}, {"u", "b"}) +
        " ON CONFLICT (user_id) DO UPDATE SET balance_micros = "
        "accounts.balance_micros + EXCLUDED.balance_micros, version = accounts.version + 1 "
        "RETURNING user_id, version"};

const PgStatement kInsertBodies{
    "billing_insert_bodies",
    "INSERT INTO usage_bodies (request_id, request_body, response_body, bodies_truncated) "
    "SELECT r, q, a, t FROM " +
        PgUnnest({"TEXT", "TEXT", "TEXT", "BOOLEAN"}, {"r", "q", "a", "t"}) +
        " ON CONFLICT (request_id) DO NOTHING"};

const PgStatement kAddDaily{
    "billing_add_daily",
    "INSERT INTO usage_daily (day, user_id, api_key_id, model, requests, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_micros, cache_write_tokens) "
    "SELECT DATE '1970-01-01' + day, user_id, api_key_id, model, requests, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_micros, cache_write_tokens FROM " +
        PgUnnest({"INTEGER", "BIGINT", "BIGINT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "BIGINT",
                  "BIGINT", "BIGINT"},
                 {"day", "user_id", "api_key_id", "model", "requests", "prompt_tokens",
                  "completion_tokens", "cached_tokens", "cost_micros", "cache_write_tokens"}) +
        " "
        "ON CONFLICT (day, user_id, api_key_id, model) DO UPDATE SET "
        "requests = usage_daily.requests + EXCLUDED.requests, "
        "prompt_tokens = usage_daily.prompt_tokens + EXCLUDED.prompt_tokens, "
        "completion_tokens = usage_daily.completion_tokens + EXCLUDED.completion_tokens, "
        "cached_tokens = usage_daily.cached_tokens + EXCLUDED.cached_tokens, "
        "cost_micros = usage_daily.cost_micros + EXCLUDED.cost_micros, "
        "cache_write_tokens = usage_daily.cache_write_tokens + EXCLUDED.cache_write_tokens"};

}  // namespace

std::vector<PriceRecord> PgBillingRepository::PricesOf(const std::string& model) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return LoadPrices(tx, model);
  });
}

std::vector<PriceRecord> PgBillingRepository::ListPrices(const std::string& model) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<PriceRecord> out;
    for (const auto& row : tx.exec_params("SELECT " + kPriceColumns +
                                              " FROM prices WHERE $1 = '' OR model = $1 "
                                              "ORDER BY effective_from DESC, id DESC",
                                          model))
      out.push_back(PriceFrom(row));
    return out;
  });
}

PriceRecord PgBillingRepository::AddPrice(const PriceRecord& p, const AuditEntry& audit) {
  nlohmann::json images = nlohmann::json::array();
  for (const auto& image : p.rates.images)
    images.push_back({{"size", image.size},
                      {"quality", image.quality},
                      {"micros_per_image", image.micros_per_image}});
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      auto row = tx.exec_params1(
          "INSERT INTO prices (model, provider, input_micros_per_mtok, output_micros_per_mtok, "
          "cached_input_micros_per_mtok, effective_from, cache_write_micros_per_mtok, "
          "image_prices, audio_micros_per_minute, micros_per_mchar) VALUES "
          "($1, $2, $3, $4, $5, " +
              Ts("$6") + ", $7, $8::JSONB, $9, $10) RETURNING " + kPriceColumns,
          p.model, p.provider, p.rates.input_micros_per_mtok, p.rates.output_micros_per_mtok,
          p.rates.cached_input_micros_per_mtok, p.effective_from_ms,
          p.rates.cache_write_micros_per_mtok, images.dump(), p.rates.audio_micros_per_minute,
          p.rates.micros_per_mchar);
      WriteAudit(tx, audit);
      tx.commit();
      return PriceFrom(row);
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists,
                  "model '" + p.model + "' already has a price from that time");
    }
  });
}

int64_t PgBillingRepository::MultiplierOf(int64_t user_id) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return LoadMultiplier(tx, user_id);
  });
}

void PgBillingRepository::SetMultiplier(int64_t user_id, int64_t multiplier_ppm,
                                        const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO multipliers (user_id, multiplier_ppm) VALUES ($1, $2) "
        "ON CONFLICT (user_id) DO UPDATE SET multiplier_ppm = EXCLUDED.multiplier_ppm",
        user_id, multiplier_ppm);
    WriteAudit(tx, audit);
    tx.commit();
  });
}

std::map<std::string, int64_t> PgBillingRepository::ServiceTierMultipliers() {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return LoadTierMultipliers(tx);
  });
}

void PgBillingRepository::SetServiceTierMultiplier(const ServiceTierMultiplier& m,
                                                   const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO service_tier_multipliers (tier, multiplier_ppm) VALUES ($1, $2) "
        "ON CONFLICT (tier) DO UPDATE SET multiplier_ppm = EXCLUDED.multiplier_ppm",
        m.tier, m.multiplier_ppm);
    WriteAudit(tx, audit);
    tx.commit();
  });
}

void PgBillingRepository::CreateAccount(int64_t user_id, int64_t credit_limit_micros,
                                        const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    try {
      tx.exec_params("INSERT INTO accounts (user_id, credit_limit_micros) VALUES ($1, $2)", user_id,
                     credit_limit_micros);
    } catch (const pqxx::unique_violation&) {
      throw Error(ErrorCode::kAlreadyExists,
                  "user " + std::to_string(user_id) + " already has an account");
    }
    WriteAudit(tx, audit);
    tx.commit();
  });
}

void PgBillingRepository::TopUp(int64_t user_id, int64_t amount_micros, const std::string& note,
                                const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    // One UPDATE adds to whatever the balance is at that moment: concurrent
    // top-ups and settlements serialise on the row and none is lost.
    auto rows = tx.exec_params(
        "UPDATE accounts SET balance_micros = balance_micros + $2, version = version + 1 "
        "WHERE user_id = $1 RETURNING user_id",
        user_id, amount_micros);
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "user " + std::to_string(user_id) + " has no account");
    tx.exec_params(
        "INSERT INTO top_ups (user_id, amount_micros, note, actor, created_at) VALUES "
        "($1, $2, $3, $4, " +
            Ts("$5") + ")",
        user_id, amount_micros, note, audit.actor, audit.at_ms);
    WriteAudit(tx, audit);
    tx.commit();
  });
}

void PgBillingRepository::SetCreditLimit(int64_t user_id, int64_t credit_limit_micros,
                                         const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto rows = tx.exec_params(
        "UPDATE accounts SET credit_limit_micros = $2, version = version + 1 WHERE user_id = $1 "
        "RETURNING user_id",
        user_id, credit_limit_micros);
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "user " + std::to_string(user_id) + " has no account");
    WriteAudit(tx, audit);
    tx.commit();
  });
}

Account PgBillingRepository::GetAccount(int64_t user_id) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    auto rows = tx.exec_params(
        "SELECT a.balance_micros, a.credit_limit_micros, 0::BIGINT, "
        "(SELECT COALESCE(SUM(amount_micros), 0)::BIGINT FROM top_ups t "
        "WHERE t.user_id = a.user_id), "
        "(SELECT COALESCE(SUM(cost_micros), 0)::BIGINT FROM usage_daily d "
        "WHERE d.user_id = a.user_id), "
        "COALESCE((SELECT multiplier_ppm FROM multipliers m WHERE m.user_id = a.user_id), "
        "1000000) "
        "FROM accounts a WHERE a.user_id = $1",
        user_id);
    if (rows.empty())
      throw Error(ErrorCode::kNotFound, "user " + std::to_string(user_id) + " has no account");
    Account a;
    a.user_id = user_id;
    a.balance_micros = rows[0][0].as<int64_t>();
    a.credit_limit_micros = rows[0][1].as<int64_t>();
    a.held_micros = rows[0][2].as<int64_t>();
    a.total_top_ups_micros = rows[0][3].as<int64_t>();
    a.total_cost_micros = rows[0][4].as<int64_t>();
    a.multiplier_ppm = rows[0][5].as<int64_t>();
    return a;
  });
}

std::vector<AccountState> PgBillingRepository::LoadAccounts(const std::vector<int64_t>& users) {
  std::vector<AccountState> out(users.size());
  if (users.empty()) return out;
  std::string ids = "{";
  for (int64_t u : users) ids += (ids.size() > 1 ? "," : "") + std::to_string(u);
  ids += "}";
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::map<int64_t, AccountState> found;
    for (const auto& row : tx.exec_params(
             "SELECT user_id, balance_micros, credit_limit_micros, version FROM accounts "
             "WHERE user_id = ANY($1::BIGINT[])",
             ids))
      found[row[0].as<int64_t>()] = {row[0].as<int64_t>(), true, row[1].as<int64_t>(),
                                     row[2].as<int64_t>(), row[3].as<int64_t>()};
    for (size_t i = 0; i < users.size(); ++i) {
      out[i].user_id = users[i];
      if (auto it = found.find(users[i]); it != found.end()) out[i] = it->second;
    }
    return out;
  });
}

std::vector<int64_t> PgBillingRepository::SettledHolds(const std::vector<int64_t>& hold_ids) {
  if (hold_ids.empty()) return {};
  std::string ids = "{";
  for (int64_t h : hold_ids) ids += (ids.size() > 1 ? "," : "") + std::to_string(h);
  ids += "}";
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<int64_t> out;
    for (const auto& row :
         tx.exec_params("SELECT hold_id FROM usage_records WHERE hold_id = ANY($1::BIGINT[])", ids))
      out.push_back(row[0].as<int64_t>());
    return out;
  });
}

std::vector<bool> PgBillingRepository::Ingest(const std::vector<UsageInput>& records,
                                              int64_t now_ms, std::vector<int64_t>* costs_out,
                                              std::map<int64_t, int64_t>* versions_out) {
  if (records.empty()) return {};
  (void)now_ms;
  // Of two deliveries of one request in a batch, the first is the one stored.
  std::vector<size_t> unique;
  {
    std::set<std::string_view> seen;
    for (size_t i = 0; i < records.size(); ++i)
      if (seen.insert(records[i].request_id).second) unique.push_back(i);
  }
  // Rows are touched in a fixed order (records by start time then request id, users and
  // aggregate keys sorted) so concurrent ingesting transactions (other replicas) wait for each
  // other instead of deadlocking. Start time first: the indexes on it (alone, per user, per key)
  // then take their entries at their right end, as time goes, not scattered over the last pages.
  std::sort(unique.begin(), unique.end(), [&](size_t a, size_t b) {
    return std::tie(records[a].started_at_ms, records[a].request_id) <
           std::tie(records[b].started_at_ms, records[b].request_id);
  });
  std::string models, users;  // array literals
  {
    std::set<std::string> model_set;
    std::set<int64_t> user_set;
    for (size_t i : unique) {
      model_set.insert(records[i].model);
      user_set.insert(records[i].user_id);
    }
    PgArrays m(1), u(1);
    for (const auto& model : model_set) m.Text(model);
    for (int64_t user : user_set) u.Int(user);
    models = std::move(m.Finish()[0]);
    users = std::move(u.Finish()[0]);
  }
  std::vector<int64_t> costs(records.size(), 0);
  std::map<int64_t, int64_t> versions;
  // One transaction. `skip_delivered` false: the records go in with a plain INSERT, which a
  // record stored before (a redelivery after a lost acknowledgement, the only way one arrives
  // twice) fails with a unique violation, rolling everything back; true: ON CONFLICT DO NOTHING
  // skips them, at the price of a pre-check of the unique index per row (a tenth of the
  // backend's CPU when every batch paid it).
  auto write = [&](pqxx::connection& conn, bool skip_delivered) {
    std::vector<bool> stored(records.size(), false);
    pqxx::work tx(conn);
    // Prices and multipliers as of this transaction: a cost is never computed from a cache.
    std::map<std::string, std::vector<PriceRecord>> prices;
    for (const auto& row : PgExecPrepared(tx, kIngestPrices, models)) {
      PriceRecord p = PriceFrom(row);
      prices[p.model].push_back(std::move(p));
    }
    std::map<int64_t, int64_t> multipliers;
    for (const auto& row : PgExecPrepared(tx, kIngestMultipliers, users))
      multipliers[row[0].as<int64_t>()] = row[1].as<int64_t>();
    std::map<std::string, int64_t> tiers;
    for (const auto& row : PgExecPrepared(tx, kIngestTiers))
      tiers[row[0].as<std::string>()] = row[1].as<int64_t>();
    std::map<int64_t, int64_t> charges;  // user -> cost
    std::vector<size_t> with_bodies;     // stored records whose key keeps bodies
    std::map<DailyKey, DailySum> daily;
    constexpr size_t kChunk = 1000;  // rows per statement (one array parameter per column)
    for (size_t from = 0; from < unique.size(); from += kChunk) {
      const size_t to = std::min(unique.size(), from + kChunk);
      PgArrays rows(kRecordCasts.size());
      for (size_t k = from; k < to; ++k) {
        const size_t i = unique[k];
        const UsageInput& r = records[i];
        auto m = multipliers.find(r.user_id);
        const int64_t multiplier = m == multipliers.end() ? kMultiplierOne : m->second;
        auto p = prices.find(r.model);
        auto price =
            p == prices.end() ? std::nullopt : SelectPrice(p->second, r.provider, r.started_at_ms);
        const int64_t tier_multiplier = TierMultiplier(tiers, r.service_tier);
        costs[i] = price ? RecordCostMicros(price->rates, r.tokens, r.usage_estimated, r.units,
                                            multiplier, tier_multiplier)
                         : 0;
        rows.Text(r.request_id)
            .Int(r.user_id)
            .Int(r.api_key_id)
            .Text(r.model)
            .Text(r.upstream_model)
            .Int(r.upstream_key_id)
            .Text(r.provider)
            .Int(r.hold_id)
            .Int(r.tokens.prompt)
            .Int(r.tokens.completion)
            .Int(r.tokens.cached)
            .Int(costs[i])
            .Int(price ? price->id : 0)
            .Int(multiplier)
            .Bool(r.usage_estimated)
            .Bool(r.streamed)
            .Int(r.status)
            .Int(r.latency_ms)
            .Bool(r.client_disconnected)
            .Int(r.attempts)
            .Text(r.client_ip)
            .Int(r.started_at_ms)
            .Int(r.finished_at_ms)
            .Text(r.service_tier)
            .Int(tier_multiplier)
            .Int(r.tokens.cache_write)
            .Text(r.endpoint_kind)
            .Int(r.units.images)
            .Text(r.units.image_size)
            .Text(r.units.image_quality)
            .Int(r.units.audio_ms)
            .Int(r.units.characters);
      }
      const std::vector<std::string> arrays = rows.Finish();
      auto params = pqxx::prepare::make_dynamic_params(arrays);
      // The first delivery of a request is the only one stored and charged.
      std::set<std::string> inserted;
      if (skip_delivered)
        for (const auto& row : PgExecPrepared(tx, kInsertNewRecords, params))
          inserted.insert(row[0].as<std::string>());
      else
        PgExecPrepared(tx, kInsertRecords, params);
      for (size_t k = from; k < to; ++k) {
        const size_t i = unique[k];
        const UsageInput& r = records[i];
        if (skip_delivered && !inserted.count(r.request_id)) continue;  // delivered before
        stored[i] = true;
        if (!r.request_body.empty() || !r.response_body.empty()) with_bodies.push_back(i);
        charges[r.user_id] += costs[i];
        DailySum& d =
            daily[{DayNumber(DayOfUnixMs(r.started_at_ms)), r.user_id, r.api_key_id, r.model}];
        d.requests += 1;
        d.prompt += r.tokens.prompt;
        d.completion += r.tokens.completion;
        d.cached += r.tokens.cached;
        d.cache_write += r.tokens.cache_write;
        d.cost += costs[i];
      }
    }
    // A record is charged even without an account (or after its hold expired):
    // the balance goes negative and the next hold is refused. One statement adds
    // to whatever each balance is at that moment (never read-modify-write).
    PgArrays accounts(2);
    for (const auto& [user_id, cost] : charges)
      if (cost != 0) accounts.Int(user_id).Int(-cost);
    // Each charged account's new version tells the hold books which charges a balance includes.
    versions.clear();
    if (accounts.rows() > 0)
      for (const auto& row : PgExecPrepared(tx, kChargeAccounts,
                                            pqxx::prepare::make_dynamic_params(accounts.Finish())))
        versions[row[0].as<int64_t>()] = row[1].as<int64_t>();
    // Bodies can be large: a few rows per statement.
    constexpr size_t kBodyChunk = 16;
    for (size_t from = 0; from < with_bodies.size(); from += kBodyChunk) {
      const size_t to = std::min(with_bodies.size(), from + kBodyChunk);
      PgArrays bodies(4);
      for (size_t k = from; k < to; ++k) {
        const UsageInput& r = records[with_bodies[k]];
        bodies.Text(r.request_id)
            .Text(r.request_body)
            .Text(r.response_body)
            .Bool(r.bodies_truncated);
      }
      PgExecPrepared(tx, kInsertBodies, pqxx::prepare::make_dynamic_params(bodies.Finish()));
    }
    if (!daily.empty()) {
      PgArrays sums(10);
      for (const auto& [k, d] : daily)
        sums.Int(k.day)
            .Int(k.user_id)
            .Int(k.api_key_id)
            .Text(k.model)
            .Int(d.requests)
            .Int(d.prompt)
            .Int(d.completion)
            .Int(d.cached)
            .Int(d.cost)
            .Int(d.cache_write);
      PgExecPrepared(tx, kAddDaily, pqxx::prepare::make_dynamic_params(sums.Finish()));
    }
    tx.commit();
    return stored;
  };
  std::vector<bool> stored = pool_.Run([&](pqxx::connection& conn) {
    try {
      return write(conn, false);
    } catch (const pqxx::unique_violation&) {
      // A record of the batch was stored before; nothing of this attempt was. Again in a new
      // transaction, skipping what is stored.
    }
    return write(conn, true);
  });
  if (costs_out) {
    costs_out->assign(records.size(), 0);
    for (size_t i = 0; i < records.size(); ++i)
      if (stored[i]) (*costs_out)[i] = costs[i];
  }
  if (versions_out) *versions_out = versions;
  return stored;
}

std::vector<ReportRow> PgBillingRepository::Report(const ReportQuery& q) {
  std::string dims;
  for (Dimension d : q.group_by) dims += std::string(dims.empty() ? "" : ", ") + DimensionColumn(d);
  std::string sql = "SELECT ";
  for (Dimension d : q.group_by)
    sql += d == Dimension::kDay ? "(day - DATE '1970-01-01')::BIGINT, "
                                : std::string(DimensionColumn(d)) + ", ";
  sql +=
      "COALESCE(SUM(requests), 0)::BIGINT, COALESCE(SUM(prompt_tokens), 0)::BIGINT, "
      "COALESCE(SUM(completion_tokens), 0)::BIGINT, COALESCE(SUM(cached_tokens), 0)::BIGINT, "
      "COALESCE(SUM(cost_micros), 0)::BIGINT, COALESCE(SUM(cache_write_tokens), 0)::BIGINT "
      "FROM usage_daily "
      "WHERE day BETWEEN DATE '1970-01-01' + $1::INTEGER AND DATE '1970-01-01' + $2::INTEGER "
      "AND ($3::BIGINT = 0 OR user_id = $3::BIGINT) "
      "AND ($4::BIGINT = 0 OR api_key_id = $4::BIGINT)";
  if (!dims.empty()) sql += " GROUP BY " + dims + " ORDER BY " + dims;
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<ReportRow> out;
    for (const auto& row :
         tx.exec_params(sql, static_cast<int32_t>(q.from_day), static_cast<int32_t>(q.to_day),
                        q.user_id, q.api_key_id)) {
      ReportRow r;
      int c = 0;
      for (Dimension d : q.group_by) {
        switch (d) {
          case Dimension::kDay:
            r.day = row[c++].as<int64_t>();
            break;
          case Dimension::kUser:
            r.user_id = row[c++].as<int64_t>();
            break;
          case Dimension::kKey:
            r.api_key_id = row[c++].as<int64_t>();
            break;
          case Dimension::kModel:
            r.model = row[c++].as<std::string>();
            break;
        }
      }
      r.requests = row[c++].as<int64_t>();
      r.tokens.prompt = row[c++].as<int64_t>();
      r.tokens.completion = row[c++].as<int64_t>();
      r.tokens.cached = row[c++].as<int64_t>();
      r.cost_micros = row[c++].as<int64_t>();
      r.tokens.cache_write = row[c++].as<int64_t>();
      out.push_back(std::move(r));
    }
    return out;
  });
}

std::vector<RecordRow> PgBillingRepository::ListRecords(const RecordQuery& q) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<RecordRow> out;
    const std::string bodies = q.include_bodies ? "b.request_body, b.response_body, "
                                                  "COALESCE(b.bodies_truncated, false)"
                                                : "'', '', false";
    for (const auto& row : tx.exec_params(
             "SELECT r.request_id, r.user_id, r.api_key_id, r.model, r.upstream_model, "
             "r.upstream_key_id, r.provider, r.hold_id, r.prompt_tokens, r.completion_tokens, "
             "r.cached_tokens, r.cost_micros, r.usage_estimated, r.streamed, r.status, "
             "r.latency_ms, r.client_disconnected, r.attempts, r.client_ip, " +
                 Ms("r.started_at") + ", " + Ms("r.finished_at") + ", b.request_id IS NOT NULL, " +
                 bodies +
                 ", r.service_tier, r.cache_write_tokens, r.endpoint_kind, r.images, r.image_size, "
                 "r.image_quality, r.audio_milliseconds, r.characters" +
                 " FROM usage_records r LEFT JOIN usage_bodies b ON b.request_id = r.request_id "
                 "WHERE ($1::BIGINT = 0 OR r.user_id = $1) AND ($2::BIGINT = 0 OR r.api_key_id = "
                 "$2) "
                 "AND ($3::TEXT = '' OR r.request_id = $3) AND ($4::BIGINT = 0 OR r.started_at < " +
                 Ts("$4") + ") ORDER BY r.started_at DESC, r.id DESC LIMIT $5",
             q.user_id, q.api_key_id, q.request_id, q.before_ms, q.limit)) {
      RecordRow out_row;
      UsageInput& u = out_row.record;
      u.request_id = row[0].as<std::string>();
      u.user_id = row[1].as<int64_t>();
      u.api_key_id = row[2].as<int64_t>();
      u.model = row[3].as<std::string>();
      u.upstream_model = row[4].as<std::string>();
      u.upstream_key_id = row[5].as<int64_t>();
      u.provider = row[6].as<std::string>();
      u.hold_id = row[7].as<int64_t>();
      u.tokens = {row[8].as<int64_t>(), row[9].as<int64_t>(), row[10].as<int64_t>()};
      out_row.cost_micros = row[11].as<int64_t>();
      u.usage_estimated = row[12].as<bool>();
      u.streamed = row[13].as<bool>();
      u.status = row[14].as<int32_t>();
      u.latency_ms = row[15].as<int64_t>();
      u.client_disconnected = row[16].as<bool>();
      u.attempts = row[17].as<int32_t>();
      u.client_ip = row[18].as<std::string>();
      u.started_at_ms = row[19].as<int64_t>();
      u.finished_at_ms = row[20].as<int64_t>();
      out_row.has_bodies = row[21].as<bool>();
      if (out_row.has_bodies) {
        u.request_body = row[22].as<std::string>();
        u.response_body = row[23].as<std::string>();
        u.bodies_truncated = row[24].as<bool>();
      }
      u.service_tier = row[25].as<std::string>();
      u.tokens.cache_write = row[26].as<int64_t>();
      u.endpoint_kind = row[27].as<std::string>();
      u.units = {row[28].as<int64_t>(), row[29].as<std::string>(), row[30].as<std::string>(),
                 row[31].as<int64_t>(), row[32].as<int64_t>()};
      out.push_back(std::move(out_row));
    }
    return out;
  });
}

std::vector<AuditEntry> PgBillingRepository::ListAudit(int32_t limit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return ::tollgate::ListAudit(tx, limit);
  });
}

}  // namespace tollgate::billing
