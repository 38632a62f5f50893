#include "tollgate/pg.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "tollgate/log.h"

namespace tollgate {
namespace {

uint64_t Fnv1a(std::string_view text) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

PgPool::PgPool(PgPoolOptions options, prometheus::Registry* registry)
    : options_(std::move(options)) {
  if (registry == nullptr) return;
  auto& conns = prometheus::BuildGauge()
                    .Name("tollgate_pg_pool_connections")
                    .Help("Connections of the PostgreSQL pool, by state")
                    .Register(*registry);
  open_gauge_ = &conns.Add({{"service", options_.name}, {"state", "open"}});
  idle_gauge_ = &conns.Add({{"service", options_.name}, {"state", "idle"}});
  auto& events = prometheus::BuildCounter()
                     .Name("tollgate_pg_pool_events_total")
                     .Help("PostgreSQL pool events: broken connections replaced, acquire timeouts")
                     .Register(*registry);
  replaced_counter_ = &events.Add({{"service", options_.name}, {"event", "replaced"}});
  timeout_counter_ = &events.Add({{"service", options_.name}, {"event", "acquire_timeout"}});
}

PgPool::~PgPool() = default;

PgPool::Lease::Lease(PgPool* pool, std::unique_ptr<pqxx::connection> conn)
    : pool_(pool), conn_(std::move(conn)) {}

PgPool::Lease::Lease(Lease&& other) noexcept
    : pool_(other.pool_), conn_(std::move(other.conn_)), broken_(other.broken_) {
  other.pool_ = nullptr;
}

PgPool::Lease::~Lease() {
  if (pool_ != nullptr && conn_) pool_->Release(std::move(conn_), broken_);
}

PgPool::Lease PgPool::Acquire() {
  std::unique_lock lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + options_.acquire_timeout;
  for (;;) {
    if (!idle_.empty()) {
      auto conn = std::move(idle_.front());
      idle_.pop_front();
      UpdateGauges();
      return Lease(this, std::move(conn));
    }
    if (open_ < options_.size) {
      ++open_;
      UpdateGauges();
      lock.unlock();
      try {
        return Lease(this, std::make_unique<pqxx::connection>(options_.dsn));
      } catch (...) {
        lock.lock();
        --open_;
        UpdateGauges();
        cv_.notify_one();
        throw;
      }
    }
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= options_.size) {
      if (timeout_counter_) timeout_counter_->Increment();
      throw PgPoolTimeout("no database connection free within " +
                          std::to_string(options_.acquire_timeout.count()) + " ms (" +
                          options_.name + " pool of " + std::to_string(options_.size) + ")");
    }
  }
}

void PgPool::Release(std::unique_ptr<pqxx::connection> conn, bool broken) {
  std::lock_guard lock(mu_);
  if (broken || !conn->is_open()) {
    --open_;
    conn.reset();
  } else {
    idle_.push_back(std::move(conn));
  }
  UpdateGauges();
  cv_.notify_one();
}

void PgPool::OnBroken(Lease& lease) {
  lease.MarkBroken();
  size_t dropped = 0;
  {
    std::lock_guard lock(mu_);
    dropped = idle_.size();
    open_ -= static_cast<int>(dropped);
    idle_.clear();
    UpdateGauges();
  }
  cv_.notify_all();
  if (replaced_counter_) replaced_counter_->Increment(1.0 + static_cast<double>(dropped));
  log::Warn("pg", "replacing broken database connections",
            {{"service", options_.name}, {"idle_dropped", dropped}});
}

void PgPool::UpdateGauges() {
  if (open_gauge_) open_gauge_->Set(open_);
  if (idle_gauge_) idle_gauge_->Set(static_cast<double>(idle_.size()));
}

bool PgPool::Ping() {
  try {
    return Run([](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      tx.exec("SELECT 1");
      return true;
    });
  } catch (const std::exception&) {
    return false;
  }
}

int PgPool::open_connections() const {
  std::lock_guard lock(mu_);
  return open_;
}

int PgPool::idle_connections() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(idle_.size());
}

int64_t SchemaVersion(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  auto exists = tx.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
  if (!exists[0][0].as<bool>()) return 0;
  return tx.exec("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0].as<int64_t>();
}

MigrationResult Migrate(pqxx::connection& conn, const std::string& service,
                        const std::vector<Migration>& migrations) {
  // One lock per service database: concurrent replicas starting together
  // apply each migration exactly once; the others wait, then find nothing to do.
  const auto lock_key = static_cast<int64_t>(Fnv1a("tollgate.migrations." + service) >> 1);
  {
    pqxx::nontransaction tx(conn);
    tx.exec("SELECT pg_advisory_lock(" + std::to_string(lock_key) + ")");
  }
  auto unlock = [&] {
    try {
      pqxx::nontransaction tx(conn);
      tx.exec("SELECT pg_advisory_unlock(" + std::to_string(lock_key) + ")");
    } catch (const std::exception&) {
      // The lock dies with the session anyway.
    }
  };
  MigrationResult result;
  try {
    {
      pqxx::nontransaction tx(conn);
      tx.exec(
          "CREATE TABLE IF NOT EXISTS schema_migrations ("
          " version BIGINT PRIMARY KEY,"
          " name TEXT NOT NULL,"
          " checksum TEXT NOT NULL,"
          " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
    }
    int64_t current = SchemaVersion(conn);
    int64_t latest = migrations.empty() ? 0 : migrations.back().version;
    if (current > latest)
      throw SchemaTooNew("the " + service + " database is at schema version " +
                         std::to_string(current) + " but this binary knows only up to " +
                         std::to_string(latest) + "; run a newer tollgate");
    for (const auto& m : migrations) {
      if (m.version <= current) continue;
      pqxx::work tx(conn);
      tx.exec(m.sql);
      tx.exec_params("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                     m.version, m.name, Hex(Fnv1a(m.sql)));
      tx.commit();
      ++result.applied;
      log::Info("migrate", "applied migration",
                {{"service", service}, {"version", m.version}, {"name", m.name}});
    }
    result.schema_version = std::max(current, latest);
  } catch (...) {
    unlock();
    throw;
  }
  unlock();
  return result;
}

std::vector<std::string> PgColumnArrays(const std::vector<std::string>& row_major, size_t columns) {
  PgArrays arrays(columns);
  if (columns == 0) return arrays.Finish();
  const size_t values = row_major.size() / columns * columns;  // whole rows only
  for (size_t i = 0; i < values; ++i) arrays.Text(row_major[i]);
  return arrays.Finish();
}

std::string& PgArrays::Next() {
  std::string& a = arrays_[column_];
  if (rows_ > 0) a += ',';
  if (++column_ == arrays_.size()) {
    column_ = 0;
    ++rows_;
  }
  return a;
}

PgArrays& PgArrays::Text(std::string_view value) {
  std::string& a = Next();
  a += '"';
  for (char ch : value) {
    if (ch == '"' || ch == '\\') a += '\\';
    a += ch;
  }
  a += '"';
  return *this;
}

PgArrays& PgArrays::Int(int64_t value) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  (void)ec;  // 24 characters hold every int64
  Next().append(buf, end);
  return *this;
}

PgArrays& PgArrays::Bool(bool value) {
  Next() += value ? 't' : 'f';
  return *this;
}

std::vector<std::string> PgArrays::Finish() {
  for (auto& a : arrays_) a += '}';
  std::vector<std::string> out = std::move(arrays_);
  arrays_.assign(out.size(), "{");
  column_ = rows_ = 0;
  return out;
}

std::string PgUnnest(const std::vector<const char*>& types, size_t first) {
  std::string out = "unnest(";
  for (size_t c = 0; c < types.size(); ++c) {
    if (c) out += ", ";
    out += "$" + std::to_string(first + c) + "::" + types[c] + "[]";
  }
  return out + ")";
}

std::string PgUnnest(const std::vector<const char*>& types, const std::vector<const char*>& names,
                     size_t first) {
  std::string out = "(SELECT ";
  for (size_t c = 0; c < types.size(); ++c) {
    if (c) out += ", ";
    out += "unnest($" + std::to_string(first + c) + "::" + types[c] + "[]) AS " + names.at(c);
  }
  return out + ") AS v";
}

}  // namespace tollgate
