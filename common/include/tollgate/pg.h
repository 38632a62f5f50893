// PostgreSQL plumbing: a small RAII connection pool and the migration runner.
// Only the Pg* repositories and this layer include pqxx.
#pragma once

#include <pqxx/pqxx>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tollgate/migration.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Gauge;
class Counter;
}  // namespace prometheus

namespace tollgate {

class PgPoolTimeout final : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct PgPoolOptions {
  std::string dsn;
  int size = 8;
  std::chrono::milliseconds acquire_timeout{2000};
  std::string name = "default";  // metrics label: the owning service
};

class PgPool final {
 public:
  explicit PgPool(PgPoolOptions options, prometheus::Registry* registry = nullptr);
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  class Lease final {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&&) = delete;
    ~Lease();
    pqxx::connection& operator*() const { return *conn_; }
    pqxx::connection* operator->() const { return conn_.get(); }
    // The connection is unusable: close it instead of returning it.
    void MarkBroken() { broken_ = true; }

   private:
    friend class PgPool;
    Lease(PgPool* pool, std::unique_ptr<pqxx::connection> conn);
    PgPool* pool_;
    std::unique_ptr<pqxx::connection> conn_;
    bool broken_ = false;
  };

  // Waits up to the acquire timeout for a free connection (opening a new one
  // while under `size`). Throws PgPoolTimeout or pqxx::broken_connection.
  Lease Acquire();

  // Runs `fn(pqxx::connection&)`. If the connection turns out broken (the
  // server restarted, pg_terminate_backend, a network cut) it is replaced and
  // `fn` runs once more on a fresh connection: `fn` must be a transaction
  // that either committed or did nothing when it throws broken_connection.
  template <typename Fn>
  auto Run(Fn&& fn) -> decltype(fn(std::declval<pqxx::connection&>())) {
    for (int attempt = 0;; ++attempt) {
      Lease lease = Acquire();
      try {
        return fn(*lease);
      } catch (const pqxx::broken_connection&) {
        OnBroken(lease);
        if (attempt >= 1) throw;
      }
    }
  }

  // Checks the database answers (readiness probes).
  bool Ping();

  int size() const { return options_.size; }
  int open_connections() const;
  int idle_connections() const;

 private:
  void Release(std::unique_ptr<pqxx::connection> conn, bool broken);
  // Marks the lease broken and closes every idle connection too: whatever
  // broke this one (a server restart, a failover) broke its siblings.
  void OnBroken(Lease& lease);
  void UpdateGauges();

  PgPoolOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<pqxx::connection>> idle_;
  int open_ = 0;
  prometheus::Gauge* open_gauge_ = nullptr;
  prometheus::Gauge* idle_gauge_ = nullptr;
  prometheus::Counter* replaced_counter_ = nullptr;
  prometheus::Counter* timeout_counter_ = nullptr;
};

class SchemaTooNew final : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct MigrationResult {
  int64_t schema_version = 0;
  int applied = 0;
};

// Applies the missing `migrations` (sorted by version) to `conn` under a
// per-service advisory lock, one transaction each, recording them in
// schema_migrations. Throws SchemaTooNew when the database has a version this
// binary does not know.
MigrationResult Migrate(pqxx::connection& conn, const std::string& service,
                        const std::vector<Migration>& migrations);

// Highest applied migration, or 0 on an empty database.
int64_t SchemaVersion(pqxx::connection& conn);

// Many rows in one statement of fixed text: one array parameter per column
// (`INSERT ... SELECT ... FROM unnest($1::TEXT[], $2::BIGINT[]) AS v (a, b)`). A VALUES list of
// rows x columns parameters is a new, large statement for PostgreSQL to parse and plan on every
// batch (most of an ingesting backend's CPU); the arrays cost the same to parse at any size.
// `row_major` holds `columns` values per row, as text; the result is one array literal per
// column, every element quoted (so empty strings, commas and quotes are carried as they are).
std::vector<std::string> PgColumnArrays(const std::vector<std::string>& row_major, size_t columns);
// The same arrays built a value at a time, row after row, with no row-major copy and numbers
// written straight into their column: Text(a).Int(b).Bool(c) per row of three columns.
class PgArrays final {
 public:
  explicit PgArrays(size_t columns) : arrays_(columns, "{") {}
  PgArrays& Text(std::string_view value);
  PgArrays& Int(int64_t value);
  PgArrays& Bool(bool value);
  size_t rows() const { return rows_; }
  // The array literals, one per column; the builder starts again with no rows.
  std::vector<std::string> Finish();

 private:
  std::string& Next();
  std::vector<std::string> arrays_;
  size_t column_ = 0;
  size_t rows_ = 0;
};

// "unnest($first::T1[], $first+1::T2[], ...)" for columns of the SQL types `types`.
std::string PgUnnest(const std::vector<const char*>& types, size_t first = 1);
// The same rows as a subquery, "(SELECT unnest($first::T1[]) AS name1, ...) AS v", for
// `... FROM <this>`. Cheaper for PostgreSQL at a few hundred rows and more: unnest() in a FROM
// list is materialised into a tuplestore first, in the select list it streams (about half the
// per-row cost of getting the rows out of the arrays).
std::string PgUnnest(const std::vector<const char*>& types, const std::vector<const char*>& names,
                     size_t first = 1);

// A statement of fixed text that a hot path runs often: prepared once per connection (parsed,
// analysed and planned by PostgreSQL once, not on every call; sent with its parameters only), as
// `name`. The pool reuses connections, so the statement is prepared on a connection's first call;
// a new connection (the pool replaced a broken one, libpqxx reconnected) prepares it again.
struct PgStatement {
  std::string name;
  std::string sql;
};

// Runs `statement` prepared on the transaction's connection (see PgStatement). Declaring it
// again with the same text is a lookup in libpqxx's table of the connection's statements.
template <typename... Args>
pqxx::result PgExecPrepared(pqxx::transaction_base& tx, const PgStatement& statement,
                            Args&&... args) {
  tx.conn().prepare(statement.name, statement.sql);
  return tx.exec_prepared(statement.name, std::forward<Args>(args)...);
}

}  // namespace tollgate
