// PgQuotaRepository's settlements against a real throwaway PostgreSQL: a batch goes in with a
// plain INSERT and, when a request of it was settled before, again skipping it.
#include "tollgate/quota/pg_repository.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "test/pg_fixture.h"
#include "tollgate/pg.h"
#include "tollgate/quota/module.h"

namespace tollgate::quota {
namespace {

using testing::TestDatabase;

class QuotaPgRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = std::make_unique<PgPool>(PgPoolOptions{db_.dsn(), 8});
    pool_->Run([](pqxx::connection& conn) { return Migrate(conn, "quota", Migrations()); });
    repo_ = std::make_unique<PgQuotaRepository>(*pool_);
  }

  static UsageKey Month(const std::string& key) {
    return {SubjectKind::kKey, key, PeriodKind::kMonth, "2026-12"};
  }
  static SettledRequest Settled(const std::string& id, int64_t tokens) {
    return {id,
            {{Month("k1"), tokens},
             {{SubjectKind::kUser, "u1", PeriodKind::kDay, "2026-12-03"}, tokens}}};
  }
  int64_t Count(const std::string& sql) {
    return pool_->Run([&](pqxx::connection& conn) {
      pqxx::read_transaction tx(conn);
      return tx.exec1(sql)[0].as<int64_t>();
    });
  }

  TestDatabase db_;
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgQuotaRepository> repo_;
};

TEST_F(QuotaPgRepositoryTest, ASettlementDeliveredAgainCountsOnceAlsoAmongNewOnes) {
  EXPECT_EQ(repo_->CommitSettlements({Settled("a/1", 10), Settled("b/1", 20)}),
            (std::vector<size_t>{0, 1}));
  // Redelivered alone, then mixed with new ones and a request twice in the same batch.
  EXPECT_EQ(repo_->CommitSettlements({Settled("a/1", 10)}), std::vector<size_t>{});
  EXPECT_EQ(repo_->CommitSettlements(
                {Settled("b/1", 20), Settled("c/1", 5), Settled("c/1", 5), Settled("d/1", 7)}),
            (std::vector<size_t>{1, 3}));
  EXPECT_EQ(repo_->LoadUsage(Month("k1")), 10 + 20 + 5 + 7);
  EXPECT_EQ(repo_->LoadUsage({SubjectKind::kUser, "u1", PeriodKind::kDay, "2026-12-03"}), 42);
  EXPECT_EQ(Count("SELECT count(*) FROM settled_requests"), 4);
}

TEST_F(QuotaPgRepositoryTest, OverlappingBatchesFromConcurrentWritersCountEachRequestOnce) {
  // Four writers (replicas' group commits, retried calls) deliver overlapping ranges of 0..99.
  constexpr int kWriters = 4;
  std::atomic<int> failures{0};
  std::vector<std::set<std::string>> fresh_by(kWriters);
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      for (int b = 0; b < 5; ++b) {
        const int from = ((b + w) % 5) * 20;
        std::vector<SettledRequest> batch;
        for (int n = from; n < from + 40 && n < 100; ++n)
          batch.push_back(Settled("r" + std::to_string(n) + "/1", 1));
        try {
          for (size_t i : repo_->CommitSettlements(batch)) fresh_by[w].insert(batch[i].request_id);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  for (auto& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  std::multiset<std::string> fresh;
  for (const auto& s : fresh_by) fresh.insert(s.begin(), s.end());
  EXPECT_EQ(fresh.size(), 100u);
  EXPECT_EQ(std::set<std::string>(fresh.begin(), fresh.end()).size(), 100u)
      << "a request was counted as new twice";
  EXPECT_EQ(repo_->LoadUsage(Month("k1")), 100);
}

TEST_F(QuotaPgRepositoryTest, PruningDropsOnlySettlementsOlderThanTheRetention) {
  repo_->CommitSettlements({Settled("old/1", 1), Settled("new/1", 1)});
  pool_->Run([](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec(
        "UPDATE settled_requests SET settled_at = now() - INTERVAL '41 days' "
        "WHERE request_id = 'old/1'");
    tx.commit();
  });
  repo_->PruneSettled(40);
  EXPECT_EQ(Count("SELECT count(*) FROM settled_requests WHERE request_id = 'old/1'"), 0);
  EXPECT_EQ(Count("SELECT count(*) FROM settled_requests WHERE request_id = 'new/1'"), 1);
  EXPECT_EQ(Count("SELECT count(*) FROM pg_indexes WHERE indexname = "
                  "'settled_requests_settled_at' AND indexdef LIKE '%USING brin%'"),
            1);
}

}  // namespace
}  // namespace tollgate::quota
