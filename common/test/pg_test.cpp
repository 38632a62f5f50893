// The pool and the migration runner against a real throwaway PostgreSQL.
#include "tollgate/pg.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <tuple>

#include "test/pg_fixture.h"

namespace tollgate {
namespace {

using testing::TestDatabase;

std::vector<Migration> TwoMigrations() {
  return {{1, "create_things", "CREATE TABLE things (id BIGSERIAL PRIMARY KEY, name TEXT)"},
          {2, "seed_things", "INSERT INTO things (name) VALUES ('a'), ('b')"}};
}

int64_t Count(pqxx::connection& c, const std::string& sql) {
  pqxx::nontransaction tx(c);
  return tx.exec(sql)[0][0].as<int64_t>();
}

TEST(PgColumnArraysTest, RowsComeBackAsSentThroughUnnest) {
  TestDatabase db;
  pqxx::connection c(db.dsn());
  // Text that an array literal must quote: empty, NULL-looking, commas, braces, quotes,
  // backslashes, spaces, non-ASCII; and numbers and booleans in typed columns.
  const std::vector<std::vector<std::string>> rows = {
      {"", "0", "true"},
      {"NULL", "-9223372036854775808", "false"},
      {"a,b {c} \"d\" \\e\\", "9223372036854775807", "true"},
      {"  spaced  ", "42", "false"},
      {"\xc3\xa9t\xc3\xa9 \xe2\x82\xac", "7", "true"}};
  std::vector<std::string> row_major;
  for (const auto& r : rows) row_major.insert(row_major.end(), r.begin(), r.end());
  pqxx::work tx(c);
  auto result = tx.exec_params("SELECT t, n::TEXT, b::TEXT FROM " +
                                   PgUnnest({"TEXT", "BIGINT", "BOOLEAN"}) + " AS v (t, n, b)",
                               pqxx::prepare::make_dynamic_params(PgColumnArrays(row_major, 3)));
  ASSERT_EQ(result.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_FALSE(result[i][0].is_null()) << i;
    EXPECT_EQ(result[i][0].as<std::string>(), rows[i][0]) << i;
    EXPECT_EQ(result[i][1].as<std::string>(), rows[i][1]) << i;
    EXPECT_EQ(result[i][2].as<std::string>(), rows[i][2]) << i;
  }
  // The same rows built a value at a time.
  PgArrays built(3);
  for (const auto& r : rows) built.Text(r[0]).Int(std::stoll(r[1])).Bool(r[2] == "true");
  EXPECT_EQ(built.rows(), rows.size());
  auto arrays = built.Finish();
  // ... and read through the select-list form.
  auto again = tx.exec_params(
      "SELECT t, n::TEXT, b::TEXT FROM " + PgUnnest({"TEXT", "BIGINT", "BOOLEAN"}, {"t", "n", "b"}),
      pqxx::prepare::make_dynamic_params(arrays));
  ASSERT_EQ(again.size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    for (int c = 0; c < 3; ++c)
      EXPECT_EQ(again[i][c].as<std::string>(), rows[i][c]) << i << "," << c;
  EXPECT_EQ(built.rows(), 0u);
  EXPECT_EQ(built.Int(1).Int(2).Int(3).Finish(), (std::vector<std::string>{"{1}", "{2}", "{3}"}));
  EXPECT_EQ(PgUnnest({"TEXT", "BIGINT"}, 3), "unnest($3::TEXT[], $4::BIGINT[])");
  EXPECT_EQ(PgUnnest({"TEXT", "BIGINT"}, {"a", "b"}, 2),
            "(SELECT unnest($2::TEXT[]) AS a, unnest($3::BIGINT[]) AS b) AS v");
  EXPECT_EQ(PgColumnArrays({}, 2), (std::vector<std::string>{"{}", "{}"}));
}

TEST(MigrateTest, AppliesOnceAndRecords) {
  TestDatabase db;
  pqxx::connection c(db.dsn());
  auto first = Migrate(c, "svc", TwoMigrations());
  EXPECT_EQ(first.applied, 2);
  EXPECT_EQ(first.schema_version, 2);
  auto second = Migrate(c, "svc", TwoMigrations());
  EXPECT_EQ(second.applied, 0);
  EXPECT_EQ(second.schema_version, 2);
  EXPECT_EQ(Count(c, "SELECT count(*) FROM things"), 2) << "the seed ran twice";
  EXPECT_EQ(Count(c, "SELECT count(*) FROM schema_migrations"), 2);
  EXPECT_EQ(SchemaVersion(c), 2);
}

TEST(MigrateTest, ConcurrentRunnersApplyEachMigrationExactlyOnce) {
  TestDatabase db;
  // A slow first migration widens the race window: without the advisory lock
  // both runners would see version 0 and both would seed.
  std::vector<Migration> migrations = {
      {1, "slow_create", "SELECT pg_sleep(0.3); CREATE TABLE things (id BIGSERIAL, name TEXT)"},
      {2, "seed", "INSERT INTO things (name) VALUES ('only-once')"}};
  constexpr int kRunners = 4;
  std::atomic<int> applied{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> runners;
  for (int i = 0; i < kRunners; ++i) {
    runners.emplace_back([&] {
      try {
        pqxx::connection c(db.dsn());  // each runner is its own session, like a process
        applied += Migrate(c, "svc", migrations).applied;
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << e.what();
      }
    });
  }
  for (auto& t : runners) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(applied.load(), 2);
  pqxx::connection c(db.dsn());
  EXPECT_EQ(Count(c, "SELECT count(*) FROM things"), 1);
}

TEST(MigrateTest, RefusesASchemaNewerThanItKnows) {
  TestDatabase db;
  pqxx::connection c(db.dsn());
  Migrate(c, "svc", TwoMigrations());
  std::vector<Migration> older = {TwoMigrations().front()};
  try {
    Migrate(c, "svc", older);
    FAIL() << "an older binary accepted a newer schema";
  } catch (const SchemaTooNew& e) {
    EXPECT_NE(std::string(e.what()).find("schema version 2"), std::string::npos) << e.what();
  }
}

TEST(MigrateTest, AFailedMigrationLeavesNoRecord) {
  TestDatabase db;
  pqxx::connection c(db.dsn());
  std::vector<Migration> bad = {{1, "ok", "CREATE TABLE a (x INT)"},
                                {2, "broken", "CREATE TABLE b (x NOSUCHTYPE)"}};
  EXPECT_ANY_THROW(Migrate(c, "svc", bad));
  EXPECT_EQ(SchemaVersion(c), 1);
  // The lock was released: a fixed binary can proceed.
  bad[1].sql = "CREATE TABLE b (x INT)";
  EXPECT_EQ(Migrate(c, "svc", bad).applied, 1);
}

std::vector<int> BackendPids(PgPool& pool, int n) {
  // Hold n leases at once so that n distinct connections exist.
  std::vector<PgPool::Lease> leases;
  std::vector<int> pids;
  for (int i = 0; i < n; ++i) {
    leases.push_back(pool.Acquire());
    pqxx::nontransaction tx(*leases.back());
    pids.push_back(tx.exec("SELECT pg_backend_pid()")[0][0].as<int>());
  }
  return pids;
}

TEST(PgPoolTest, ReplacesConnectionsKilledByTheServer) {
  TestDatabase db;
  PgPool pool({db.dsn(), 3, std::chrono::milliseconds(2000), "test"});
  auto before = BackendPids(pool, 3);
  EXPECT_EQ(pool.open_connections(), 3);
  {
    pqxx::connection admin(db.dsn());
    pqxx::nontransaction tx(admin);
    for (int pid : before) tx.exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  }
  // Every pooled connection is now dead; each Run must still succeed, on a new backend.
  for (int i = 0; i < 6; ++i) {
    int pid = pool.Run([](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      return tx.exec("SELECT pg_backend_pid()")[0][0].as<int>();
    });
    EXPECT_EQ(std::find(before.begin(), before.end(), pid), before.end())
        << "query ran on a terminated backend";
  }
  EXPECT_LE(pool.open_connections(), 3);
  EXPECT_TRUE(pool.Ping());
}

TEST(PgPoolTest, APreparedStatementIsPreparedOncePerConnectionAndAgainAfterAReconnect) {
  TestDatabase db;
  PgPool pool({db.dsn(), 1, std::chrono::milliseconds(2000), "test"});
  const PgStatement statement{"test_double",
                              "SELECT v * 2 FROM unnest($1::BIGINT[]) AS t (v) ORDER BY v"};
  // Doubles the values and reports the backend and how often it holds the statement.
  auto run = [&](const std::string& values) {
    return pool.Run([&](pqxx::connection& c) {
      pqxx::work tx(c);
      std::vector<int64_t> doubled;
      for (const auto& row : PgExecPrepared(tx, statement, values))
        doubled.push_back(row[0].as<int64_t>());
      auto state = tx.exec(
          "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements "
          "WHERE name = 'test_double')");
      tx.commit();
      return std::make_tuple(doubled, state[0][0].as<int>(), state[0][1].as<int64_t>());
    });
  };
  auto [first, pid, prepared] = run("{1,2,3}");
  EXPECT_EQ(first, (std::vector<int64_t>{2, 4, 6}));
  EXPECT_EQ(prepared, 1);
  auto [second, same_pid, still] = run("{5}");
  EXPECT_EQ(second, (std::vector<int64_t>{10}));
  EXPECT_EQ(same_pid, pid) << "the pool should have reused its one connection";
  EXPECT_EQ(still, 1);
  {
    pqxx::connection admin(db.dsn());
    pqxx::nontransaction tx(admin);
    tx.exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  }
  // The next call finds its connection dead; it must run on a new backend, prepared there again.
  auto [third, new_pid, again] = run("{7,8}");
  EXPECT_EQ(third, (std::vector<int64_t>{14, 16}));
  EXPECT_NE(new_pid, pid);
  EXPECT_EQ(again, 1);
  auto [fourth, pid4, once] = run("{0}");
  EXPECT_EQ(fourth, (std::vector<int64_t>{0}));
  EXPECT_EQ(pid4, new_pid);
  EXPECT_EQ(once, 1);
}

TEST(PgPoolTest, AcquireTimesOutWhenExhausted) {
  TestDatabase db;
  PgPool pool({db.dsn(), 1, std::chrono::milliseconds(100), "test"});
  auto held = pool.Acquire();
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(pool.Acquire(), PgPoolTimeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(90));
}

TEST(PgPoolTest, AReleasedConnectionIsReused) {
  TestDatabase db;
  PgPool pool({db.dsn(), 2, std::chrono::milliseconds(1000), "test"});
  { auto a = pool.Acquire(); }
  { auto b = pool.Acquire(); }
  EXPECT_EQ(pool.open_connections(), 1);
  EXPECT_EQ(pool.idle_connections(), 1);
}

TEST(PgPoolTest, UnreachableDatabaseFailsClearly) {
  PgPool pool({"host=/nonexistent-socket-dir dbname=x connect_timeout=1", 1,
               std::chrono::milliseconds(100), "test"});
  EXPECT_THROW(pool.Acquire(), pqxx::broken_connection);
  EXPECT_EQ(pool.open_connections(), 0);
  EXPECT_FALSE(pool.Ping());
}

}  // namespace
}  // namespace tollgate
