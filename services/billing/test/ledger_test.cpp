// The ledger against a real throwaway PostgreSQL: Billing logic over
// PgBillingRepository, with a fake clock.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <thread>

#include "test/fake_clock.h"
#include "test/pg_fixture.h"
#include "tollgate/billing/billing.h"
#include "tollgate/billing/ingestor.h"
#include "tollgate/billing/module.h"
#include "tollgate/billing/pg_repository.h"
#include "tollgate/civil_date.h"
#include "tollgate/pg.h"

namespace tollgate::billing {
namespace {

using testing::FakeClock;
using testing::TestDatabase;

constexpr int64_t kDay = 86'400'000;
// 2025-11-22T10:00:00Z
constexpr int64_t kT0 = 20'414 * kDay + 10 * 3'600'000;

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pool_ = std::make_unique<PgPool>(PgPoolOptions{db_.dsn(), 8});
    pool_->Run([](pqxx::connection& conn) { return Migrate(conn, "billing", Migrations()); });
    repo_ = std::make_unique<PgBillingRepository>(*pool_);
    billing_ = std::make_unique<Billing>(*repo_, clock_, BillingOptions{std::chrono::minutes(10)});
    // $0.15 / $0.60 / $0.075 per 1M tokens: 1000 prompt + 500 completion = 450 micro-units.
    NewPrice p;
    p.model = "gpt-4o-mini";
    p.input_micros_per_mtok = 150'000;
    p.output_micros_per_mtok = 600'000;
    p.cached_input_micros_per_mtok = 75'000;
    p.effective_from_ms = kT0 - kDay;
    billing_->SetPrice("ops", p);
  }

  UsageInput Usage(const std::string& request_id, int64_t user, int64_t prompt = 1000,
                   int64_t completion = 500, int64_t cached = 0) {
    UsageInput u;
    u.request_id = request_id;
    u.user_id = user;
    u.api_key_id = user * 10;
    u.model = "gpt-4o-mini";
    u.upstream_model = "gpt-4o-mini-2024-07-18";
    u.upstream_key_id = 3;
    u.tokens = {prompt, completion, cached};
    u.status = 200;
    u.streamed = true;
    u.client_ip = "203.0.113.7";
    u.started_at_ms = clock_.UnixMillis();
    return u;
  }

  HoldInput HoldFor(int64_t user, int64_t prompt = 1000, int64_t completion = 500) {
    HoldInput h;
    h.request_id = "hold-" + std::to_string(++holds_);
    h.user_id = user;
    h.model = "gpt-4o-mini";
    h.estimated_prompt_tokens = prompt;
    h.max_completion_tokens = completion;
    return h;
  }

  int64_t Count(const std::string& sql) {
    return pool_->Run([&](pqxx::connection& conn) {
      pqxx::read_transaction tx(conn);
      return tx.exec1(sql)[0].as<int64_t>();
    });
  }

  std::atomic<int> holds_{0};
  TestDatabase db_;
  FakeClock clock_{Clock::WallTime(std::chrono::milliseconds(kT0))};
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgBillingRepository> repo_;
  std::unique_ptr<Billing> billing_;
};

TEST_F(LedgerTest, TheSameRecordDeliveredTwiceIsCountedOnce) {
  billing_->CreateAccount("ops", 1, 0);
  billing_->TopUp("ops", 1, 10'000, "");
  EXPECT_EQ(billing_->Record({Usage("req-1", 1)}), std::vector<bool>{true});
  // Redelivered alone, then again inside a batch that also repeats it.
  EXPECT_EQ(billing_->Record({Usage("req-1", 1)}), std::vector<bool>{false});
  EXPECT_EQ(billing_->Record({Usage("req-1", 1), Usage("req-2", 1), Usage("req-2", 1)}),
            (std::vector<bool>{false, true, false}));
  EXPECT_EQ(Count("SELECT count(*) FROM usage_records"), 2);
  EXPECT_EQ(Count("SELECT sum(requests) FROM usage_daily"), 2);
  Account a = billing_->GetBalance(1);
  EXPECT_EQ(a.total_cost_micros, 900);
  EXPECT_EQ(a.balance_micros, 10'000 - 900);
}

TEST_F(LedgerTest, CostsFollowPriceHistoryMultipliersAndCachedTokens) {
  billing_->CreateAccount("ops", 1, 0);
  billing_->TopUp("ops", 1, 1'000'000, "");
  // From T0 + 1h the price doubles; records keep the price of their own start time.
  NewPrice later;
  later.model = "gpt-4o-mini";
  later.input_micros_per_mtok = 300'000;
  later.output_micros_per_mtok = 1'200'000;
  later.effective_from_ms = kT0 + 3'600'000;
  billing_->SetPrice("ops", later);
  billing_->SetMultiplier("ops", 1, 1'500'000);

  UsageInput before = Usage("before", 1, 1000, 500, 400);  // 420 * 1.5 = 630
  UsageInput after = Usage("after", 1, 1000, 500, 0);
  after.started_at_ms = kT0 + 2 * 3'600'000;  // 900 * 1.5 = 1350
  UsageInput unpriced = Usage("unpriced", 1);
  unpriced.model = "no-such-price";
  billing_->Record({before, after, unpriced});
  auto cost = [&](const std::string& id) {
    return Count("SELECT cost_micros FROM usage_records WHERE request_id = '" + id + "'");
  };
  EXPECT_EQ(cost("before"), 630);
  EXPECT_EQ(cost("after"), 1350);
  EXPECT_EQ(cost("unpriced"), 0);
  // The cached price defaults to the input price when not given: 400 cached at 300000.
  UsageInput cached = Usage("cached", 1, 1000, 0, 400);
  cached.started_at_ms = kT0 + 2 * 3'600'000;
  billing_->Record({cached});
  EXPECT_EQ(cost("cached"), 450);  // 1000 * 300000 / 1e6 = 300, x1.5
  EXPECT_EQ(billing_->GetBalance(1).balance_micros, 1'000'000 - 630 - 1350 - 450);
}

TEST_F(LedgerTest, CacheWritesAreChargedAtTheirPriceStoredAndReported) {
  billing_->CreateAccount("ops", 2, 0);
  billing_->TopUp("ops", 2, 1'000'000, "");
  NewPrice claude;
  claude.model = "claude-haiku";
  claude.input_micros_per_mtok = 1'000'000;
  claude.output_micros_per_mtok = 5'000'000;
  claude.cached_input_micros_per_mtok = 100'000;
  claude.cache_write_micros_per_mtok = 1'250'000;
  claude.effective_from_ms = kT0 - kDay;
  EXPECT_EQ(billing_->SetPrice("ops", claude).rates.cache_write_micros_per_mtok, 1'250'000);
  // Without a cache-write price, cache writes cost the input price (as before they had one).
  NewPrice plain = claude;
  plain.model = "claude-plain";
  plain.cache_write_micros_per_mtok.reset();
  EXPECT_EQ(billing_->SetPrice("ops", plain).rates.cache_write_micros_per_mtok, 1'000'000);
  bool listed = false;
  for (const PriceRecord& p : billing_->ListPrices("claude-haiku"))
    listed = listed || p.rates.cache_write_micros_per_mtok == 1'250'000;
  EXPECT_TRUE(listed);

  // 100 plain + 2000 read + 1000 written, 10 out: 100 + 200 + 1250 + 50 = 1600.
  UsageInput written = Usage("cache-write", 2, 3100, 10, 2000);
  written.model = "claude-haiku";
  written.tokens.cache_write = 1000;
  UsageInput as_input = written;
  as_input.request_id = "cache-write-plain";
  as_input.model = "claude-plain";  // 100 + 200 + 1000 + 50 = 1350
  billing_->Record({written, as_input});
  auto cost = [&](const std::string& id) {
    return Count("SELECT cost_micros FROM usage_records WHERE request_id = '" + id + "'");
  };
  EXPECT_EQ(cost("cache-write"), 1600);
  EXPECT_EQ(cost("cache-write-plain"), 1350);
  EXPECT_EQ(Count("SELECT cache_write_tokens FROM usage_records WHERE request_id = 'cache-write'"),
            1000);
  EXPECT_EQ(billing_->GetBalance(2).balance_micros, 1'000'000 - 1600 - 1350);
  RecordQuery q;
  q.request_id = "cache-write";
  auto rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.tokens.cache_write, 1000);
  const std::string day = FormatDay(DayOfUnixMs(clock_.UnixMillis()));
  auto totals = billing_->UsageReport(day, day, {}, 2);
  ASSERT_EQ(totals.size(), 1u);
  EXPECT_EQ(totals[0].tokens.cache_write, 2000);
  EXPECT_EQ(totals[0].tokens.cached, 4000);
  EXPECT_EQ(totals[0].cost_micros, 1600 + 1350);
}

TEST_F(LedgerTest, ServiceTierMultipliersAreSetListedAuditedAndPriceRecords) {
  billing_->CreateAccount("ops", 1, 0);
  billing_->TopUp("ops", 1, 1'000'000, "");
  EXPECT_TRUE(billing_->ListServiceTierMultipliers().empty());
  ServiceTierMultiplier set = billing_->SetServiceTierMultiplier("alice", "priority", 2'500'000);
  EXPECT_EQ(set.tier, "priority");
  EXPECT_EQ(set.multiplier_ppm, 2'500'000);
  billing_->SetServiceTierMultiplier("alice", "flex", 500'000);
  billing_->SetServiceTierMultiplier("bob", "priority", 2'000'000);  // replaces x2.5
  auto listed = billing_->ListServiceTierMultipliers();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].tier, "flex");
  EXPECT_EQ(listed[0].multiplier_ppm, 500'000);
  EXPECT_EQ(listed[1].tier, "priority");
  EXPECT_EQ(listed[1].multiplier_ppm, 2'000'000);

  // Refused changes leave neither a row nor an audit entry.
  EXPECT_THROW(billing_->SetServiceTierMultiplier("bob", "", 2'000'000), Error);
  EXPECT_THROW(billing_->SetServiceTierMultiplier("bob", "pri ority", 2'000'000), Error);
  EXPECT_THROW(billing_->SetServiceTierMultiplier("bob", "scale", 0), Error);
  EXPECT_THROW(billing_->SetServiceTierMultiplier("bob", "scale", kMaxServiceTierMultiplierPpm + 1),
               Error);
  EXPECT_EQ(Count("SELECT count(*) FROM service_tier_multipliers"), 2);
  auto log = billing_->ListAuditLog(0);
  ASSERT_GE(log.size(), 3u);
  EXPECT_EQ(log[0].action, "set_service_tier_multiplier");
  EXPECT_EQ(log[0].actor, "bob");
  EXPECT_EQ(log[0].target, "service_tier:priority");
  EXPECT_NE(log[0].details.find("\"multiplier_ppm\": 2000000"), std::string::npos)
      << log[0].details;
  EXPECT_EQ(log[1].target, "service_tier:flex");
  EXPECT_EQ(log[2].actor, "alice");
  EXPECT_EQ(Count("SELECT count(*) FROM audit_log WHERE action = 'set_service_tier_multiplier'"),
            3);

  // cost = price x user x tier, rounded once: 1000 + 500 tokens are 450 at x1.
  billing_->SetMultiplier("ops", 1, 1'500'000);
  auto tiered = [&](const std::string& id, const std::string& tier) {
    UsageInput u = Usage(id, 1);
    u.service_tier = tier;
    return u;
  };
  billing_->Record({tiered("priority", "priority"), tiered("flex", "flex"), tiered("default", ""),
                    tiered("named-default", "default"), tiered("unknown", "scale"),
                    tiered("fast", "fast")});
  auto cost = [&](const std::string& id) {
    return Count("SELECT cost_micros FROM usage_records WHERE request_id = '" + id + "'");
  };
  EXPECT_EQ(cost("priority"), 1350);  // 450 x1.5 x2
  EXPECT_EQ(cost("flex"), 338);       // 450 x1.5 x0.5 = 337.5, up
  EXPECT_EQ(cost("default"), 675);
  EXPECT_EQ(cost("named-default"), 675);
  EXPECT_EQ(cost("unknown"), 675) << "a tier without a multiplier is x1";
  EXPECT_EQ(cost("fast"), 1350) << "OpenAI's fast is priority";
  EXPECT_EQ(Count("SELECT service_tier_multiplier_ppm FROM usage_records WHERE request_id = "
                  "'priority'"),
            2'000'000);
  EXPECT_EQ(billing_->GetBalance(1).balance_micros,
            1'000'000 - 1350 - 338 - 675 - 675 - 675 - 1350);
  // The tier is kept with the record, for reports and support.
  RecordQuery q;
  q.request_id = "priority";
  auto rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.service_tier, "priority");
  EXPECT_EQ(rows[0].cost_micros, 1350);
  q.request_id = "default";
  EXPECT_EQ(billing_->ListRecords(q).at(0).record.service_tier, "");
}

TEST_F(LedgerTest, AHoldIsPricedWithTheTierAskedForAndNeverBelowTheRecordsCost) {
  billing_->CreateAccount("ops", 2, 0);
  billing_->TopUp("ops", 2, 1'000'000, "");
  auto hold = [&](const std::string& tier) {
    HoldInput h = HoldFor(2);
    h.service_tier = tier;
    return billing_->Hold(h).amount_micros;
  };
  EXPECT_EQ(hold(""), 450);
  EXPECT_EQ(hold("priority"), 450) << "no multiplier yet: x1";
  billing_->SetServiceTierMultiplier("ops", "priority", 2'000'000);
  billing_->SetServiceTierMultiplier("ops", "flex", 500'000);
  // A change made through this replica applies to its holds at once.
  EXPECT_EQ(hold("priority"), 900);
  EXPECT_EQ(hold("fast"), 900);
  EXPECT_EQ(hold("auto"), 450);
  EXPECT_EQ(hold(""), 450);
  // flex x0.5, but the upstream may serve it at the default tier: the hold covers x1.
  EXPECT_EQ(hold("flex"), 450);

  // The same tokens recorded at the tier asked for cost exactly what was held.
  HoldInput h = HoldFor(2);
  h.service_tier = "priority";
  HoldDecision d = billing_->Hold(h);
  UsageInput u = Usage("held-priority", 2);
  u.hold_id = d.hold_id;
  u.service_tier = "priority";
  billing_->Record({u});
  EXPECT_EQ(Count("SELECT cost_micros FROM usage_records WHERE request_id = 'held-priority'"),
            d.amount_micros);

  // Another replica's change reaches this one's holds after the cache's TTL; a record is priced
  // from the database at once.
  pool_->Run([](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec("UPDATE service_tier_multipliers SET multiplier_ppm = 3000000 WHERE tier = 'priority'");
    tx.commit();
  });
  EXPECT_EQ(hold("priority"), 900);
  UsageInput fresh = Usage("fresh-priority", 2);
  fresh.service_tier = "priority";
  billing_->Record({fresh});
  EXPECT_EQ(Count("SELECT cost_micros FROM usage_records WHERE request_id = 'fresh-priority'"),
            1350);
  clock_.Advance(std::chrono::milliseconds(5000));
  EXPECT_EQ(hold("priority"), 1350);
}

TEST_F(LedgerTest, ManyParallelSettlesForOneUserKeepTheBalanceExact) {
  billing_->CreateAccount("ops", 7, 0);
  billing_->TopUp("ops", 7, 5'000'000, "");
  constexpr int kThreads = 8, kBatches = 25, kPerBatch = 10;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<UsageInput> batch;
        for (int i = 0; i < kPerBatch; ++i)
          batch.push_back(Usage(
              "p-" + std::to_string(t) + "-" + std::to_string(b) + "-" + std::to_string(i), 7));
        // Every batch is also delivered twice, concurrently with everything else.
        try {
          billing_->Record(batch);
          billing_->Record(batch);
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  // Top-ups race with the settles too.
  std::thread topups([&] {
    for (int i = 0; i < 20; ++i) billing_->TopUp("ops", 7, 1'000, "");
  });
  for (auto& t : threads) t.join();
  topups.join();
  ASSERT_EQ(failures.load(), 0);
  const int64_t n = kThreads * kBatches * kPerBatch;
  EXPECT_EQ(Count("SELECT count(*) FROM usage_records WHERE user_id = 7"), n);
  Account a = billing_->GetBalance(7);
  EXPECT_EQ(a.total_cost_micros, n * 450);
  EXPECT_EQ(a.total_top_ups_micros, 5'000'000 + 20 * 1'000);
  EXPECT_EQ(a.balance_micros, 5'000'000 + 20 * 1'000 - n * 450);
  EXPECT_EQ(a.balance_micros, a.total_top_ups_micros - a.total_cost_micros);
}

// A batch goes in with a plain INSERT; one holding a record stored before fails and is written
// again in a new transaction, skipping it. Redeliveries mixed with new records, from several
// writers at once (replicas, retried calls): every request stored, counted and charged once.
TEST_F(LedgerTest, RedeliveriesMixedWithNewRecordsFromConcurrentWritersAreChargedOnce) {
  for (int64_t user : {21, 22}) {
    billing_->CreateAccount("ops", user, 0);
    billing_->TopUp("ops", user, 1'000'000, "");
  }
  auto record = [&](int n) {
    UsageInput u = Usage("mix-" + std::to_string(n), 21 + n % 2);
    if (n % 5 == 0) {
      u.request_body = "request " + std::to_string(n);
      u.response_body = "response " + std::to_string(n);
    }
    return u;
  };
  // Requests 0..39 stored first; each writer then delivers 20..99 (20..39 again) in its own
  // order of batches, so the writers' plain INSERTs collide with each other too.
  std::vector<UsageInput> first;
  for (int n = 0; n < 40; ++n) first.push_back(record(n));
  EXPECT_EQ(billing_->Record(first), std::vector<bool>(40, true));
  constexpr int kWriters = 4;
  std::vector<std::map<std::string, int>> stored_by(kWriters);
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      for (int b = 0; b < 4; ++b) {
        const int from = 20 + ((b + w) % 4) * 20;
        std::vector<UsageInput> batch;
        for (int n = from; n < from + 20; ++n) batch.push_back(record(n));
        try {
          auto stored = billing_->Record(batch);
          for (size_t i = 0; i < batch.size(); ++i)
            if (stored[i]) ++stored_by[w][batch[i].request_id];
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  for (auto& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  // Each request the writers brought for the first time (40..99) was stored by exactly one.
  std::map<std::string, int> stored;
  for (const auto& m : stored_by)
    for (const auto& [id, times] : m) stored[id] += times;
  EXPECT_EQ(stored.size(), 60u);
  for (const auto& [id, times] : stored) {
    EXPECT_EQ(times, 1) << id;
    EXPECT_GE(std::stoi(id.substr(4)), 40) << id << " was stored before";
  }
  EXPECT_EQ(Count("SELECT count(*) FROM usage_records WHERE request_id LIKE 'mix-%'"), 100);
  EXPECT_EQ(Count("SELECT count(*) FROM usage_bodies WHERE request_id LIKE 'mix-%'"), 20);
  EXPECT_EQ(Count("SELECT sum(requests) FROM usage_daily WHERE user_id IN (21, 22)"), 100);
  for (int64_t user : {21, 22}) {
    Account a = billing_->GetBalance(user);
    EXPECT_EQ(a.total_cost_micros, 50 * 450) << user;
    EXPECT_EQ(a.balance_micros, 1'000'000 - 50 * 450) << user;
  }
}

TEST_F(LedgerTest, UnitPricesAreStoredListedAndChargedWithTheirUnits) {
  billing_->CreateAccount("ops", 4, 0);
  billing_->TopUp("ops", 4, 300'000, "");
  NewPrice dalle;
  dalle.model = "dall-e-3";
  dalle.image_prices = {"1024x1024=40000", "1024x1024/hd=80000", "*/*=120000"};
  dalle.effective_from_ms = kT0 - kDay;
  billing_->SetPrice("ops", dalle);
  NewPrice whisper;
  whisper.model = "whisper-1";
  whisper.audio_micros_per_minute = 6'000;
  whisper.effective_from_ms = kT0 - kDay;
  billing_->SetPrice("ops", whisper);
  NewPrice bad = dalle;
  bad.image_prices = {"1024x1024:hd=1"};
  EXPECT_THROW(billing_->SetPrice("ops", bad), Error);
  auto listed = billing_->ListPrices("dall-e-3");
  ASSERT_EQ(listed.size(), 1u);
  ASSERT_EQ(listed[0].rates.images.size(), 3u);
  EXPECT_EQ(listed[0].rates.images[1].quality, "hd");
  EXPECT_EQ(billing_->ListPrices("whisper-1")[0].rates.audio_micros_per_minute, 6'000);

  // The hold: two images at the highest price, whatever the answer's size.
  HoldInput hold = HoldFor(4, 10, 0);
  hold.model = "dall-e-3";
  hold.units.images = 2;
  HoldDecision held = billing_->Hold(hold);
  ASSERT_TRUE(held.granted);
  EXPECT_EQ(held.amount_micros, 240'000);
  hold.request_id = "hold-three";
  hold.units.images = 3;
  EXPECT_FALSE(billing_->Hold(hold).granted) << "360,000 asked, 60,000 left";

  UsageInput images = Usage("images", 4, 10, 0);
  images.model = "dall-e-3";
  images.usage_estimated = true;
  images.endpoint_kind = "images_generations";
  images.units = {2, "1024x1024", "hd", 0, 0};
  images.hold_id = held.hold_id;
  UsageInput audio = Usage("audio", 4, 0, 0);
  audio.model = "whisper-1";
  audio.endpoint_kind = "audio_transcriptions";
  audio.units.audio_ms = 2'500;
  billing_->Record({images, audio});
  auto cost = [&](const std::string& id) {
    return Count("SELECT cost_micros FROM usage_records WHERE request_id = '" + id + "'");
  };
  EXPECT_EQ(cost("images"), 160'000);
  EXPECT_EQ(cost("audio"), 250);
  RecordQuery q;
  q.request_id = "images";
  auto rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.endpoint_kind, "images_generations");
  EXPECT_EQ(rows[0].record.units.images, 2);
  EXPECT_EQ(rows[0].record.units.image_quality, "hd");
  EXPECT_EQ(billing_->GetBalance(4).balance_micros, 300'000 - 160'000 - 250);
}

TEST_F(LedgerTest, InsufficientBalanceRefusesTheHold) {
  // No account: a priced request cannot be held.
  EXPECT_FALSE(billing_->Hold(HoldFor(3)).granted);
  billing_->CreateAccount("ops", 3, 0);
  billing_->TopUp("ops", 3, 1000, "");
  HoldDecision first = billing_->Hold(HoldFor(3));  // 450 of 1000
  ASSERT_TRUE(first.granted);
  EXPECT_EQ(first.amount_micros, 450);
  EXPECT_EQ(first.expires_at_ms, kT0 + 600'000);
  EXPECT_TRUE(billing_->Hold(HoldFor(3)).granted);  // 900 of 1000
  HoldDecision third = billing_->Hold(HoldFor(3));
  EXPECT_FALSE(third.granted) << "100 left, 450 asked";
  EXPECT_EQ(third.available_micros, 100);
  // Releasing one makes room again; a credit limit adds to what may be spent.
  billing_->Release(first.hold_id);
  EXPECT_TRUE(billing_->Hold(HoldFor(3)).granted);
  EXPECT_FALSE(billing_->Hold(HoldFor(3)).granted);
  billing_->SetCreditLimit("ops", 3, 400);
  EXPECT_TRUE(billing_->Hold(HoldFor(3)).granted);
  Account a = billing_->GetBalance(3);
  EXPECT_EQ(a.held_micros, 3 * 450);
  EXPECT_EQ(a.available_micros(), 1000 + 400 - 3 * 450);
  // An unpriced model holds nothing, so it is granted while the account is not overdrawn.
  HoldInput free = HoldFor(3);
  free.model = "no-such-price";
  EXPECT_TRUE(billing_->Hold(free).granted);
}

TEST_F(LedgerTest, AHoldIsAtLeastItsFloorSoASpentBalanceIsRefusedWhateverThePrice) {
  // The edge's catch-all: nothing priced (an unpriced model, no tokens), but a floor.
  auto files = [this](int64_t floor) {
    HoldInput h = HoldFor(8, 0, 0);
    h.model = "no-such-price";
    h.min_amount_micros = floor;
    return h;
  };
  EXPECT_FALSE(billing_->Hold(files(1)).granted) << "no account: 0 available";
  billing_->CreateAccount("ops", 8, 0);
  EXPECT_FALSE(billing_->Hold(files(1)).granted) << "a prepaid account with nothing on it";
  EXPECT_TRUE(billing_->Hold(files(0)).granted) << "no floor: only an overdrawn account is refused";
  billing_->TopUp("ops", 8, 1000, "");
  HoldDecision floor = billing_->Hold(files(1));
  ASSERT_TRUE(floor.granted);
  EXPECT_EQ(floor.amount_micros, 1);
  // Priced above the floor, the price holds; below it, the floor.
  HoldInput priced = HoldFor(8);
  priced.min_amount_micros = 10;
  HoldDecision d = billing_->Hold(priced);
  ASSERT_TRUE(d.granted);
  EXPECT_EQ(d.amount_micros, 450);
  priced = HoldFor(8);
  priced.min_amount_micros = 500;
  EXPECT_EQ(billing_->Hold(priced).amount_micros, 500);
  EXPECT_EQ(billing_->GetBalance(8).held_micros, 1 + 450 + 500);
}

TEST_F(LedgerTest, ARetriedHoldGetsTheSameHoldBack) {
  billing_->CreateAccount("ops", 6, 0);
  billing_->TopUp("ops", 6, 1000, "");
  HoldInput h = HoldFor(6);
  HoldDecision first = billing_->Hold(h);
  ASSERT_TRUE(first.granted);
  HoldDecision again = billing_->Hold(h);
  EXPECT_TRUE(again.granted);
  EXPECT_EQ(again.hold_id, first.hold_id);
  EXPECT_EQ(billing_->GetBalance(6).held_micros, 450) << "reserved once";
  // Another user cannot reuse the request id (nor learn the hold).
  billing_->CreateAccount("ops", 16, 0);
  billing_->TopUp("ops", 16, 1000, "");
  h.user_id = 16;
  EXPECT_THROW(billing_->Hold(h), Error);
}

TEST_F(LedgerTest, HoldReadsPricesThroughAShortCacheAndSettlementNever) {
  billing_->CreateAccount("ops", 2, 0);
  billing_->TopUp("ops", 2, 1'000'000, "");
  EXPECT_EQ(billing_->Hold(HoldFor(2)).amount_micros, 450);
  // Another replica doubles the price and sets a multiplier: this one's holds see it only
  // after the cache's TTL (5 s)...
  pool_->Run([](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO prices (model, provider, input_micros_per_mtok, output_micros_per_mtok, "
        "cached_input_micros_per_mtok, effective_from) VALUES ('gpt-4o-mini', '', 300000, "
        "1200000, 150000, TIMESTAMPTZ 'epoch' + $1::BIGINT * INTERVAL '1 millisecond')",
        kT0 - 1000);
    tx.exec("INSERT INTO multipliers (user_id, multiplier_ppm) VALUES (2, 2000000)");
    tx.commit();
  });
  EXPECT_EQ(billing_->Hold(HoldFor(2)).amount_micros, 450);
  // ...but a record settles at the price in the database, at once: 900 x2.
  billing_->Record({Usage("fresh", 2)});
  EXPECT_EQ(Count("SELECT cost_micros FROM usage_records WHERE request_id = 'fresh'"), 1800);
  clock_.Advance(std::chrono::milliseconds(5000));
  EXPECT_EQ(billing_->Hold(HoldFor(2)).amount_micros, 1800);
  // A change made through this replica applies to its holds at once.
  billing_->SetMultiplier("ops", 2, 1'000'000);
  EXPECT_EQ(billing_->Hold(HoldFor(2)).amount_micros, 900);
}

TEST_F(LedgerTest, ParallelHoldsNeverSpendTheSameMoneyTwice) {
  billing_->CreateAccount("ops", 4, 0);
  billing_->TopUp("ops", 4, 450 * 10 + 449, "");
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i)
        if (billing_->Hold(HoldFor(4)).granted) ++granted;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 10);
}

TEST_F(LedgerTest, ConcurrentHoldsStayExactPerUserWithoutADatabaseWrite) {
  // Two users, 16 threads, 200 holds: each user gets exactly what its balance covers, a request
  // asking twice gets one hold, and no hold touched the database (they live in memory).
  billing_->CreateAccount("ops", 7, 0);
  billing_->TopUp("ops", 7, 450 * 30, "");
  billing_->CreateAccount("ops", 8, 0);
  billing_->TopUp("ops", 8, 450 * 70 + 100, "");
  std::mutex mu;
  std::map<int64_t, int> granted;
  std::map<int64_t, std::set<int64_t>> ids;
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 13; ++i) {
        HoldInput h = HoldFor((t + i) % 2 == 0 ? 7 : 8);
        if (t < 2 && i == 0) h.request_id = "twice", h.user_id = 8;  // the same request, twice
        HoldDecision d = billing_->Hold(h);
        std::lock_guard lock(mu);
        if (d.granted) {
          ++granted[h.user_id];
          ids[h.user_id].insert(d.hold_id);
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted[7], 30);
  EXPECT_EQ(ids[7].size(), 30u);
  EXPECT_EQ(ids[8].size(), 70u);  // "twice" holds once
  EXPECT_EQ(billing_->GetBalance(7).held_micros, 450 * 30);
  EXPECT_EQ(billing_->GetBalance(8).held_micros, 450 * 70);
  EXPECT_EQ(Count("SELECT count(*) FROM holds"), 0);
}

TEST_F(LedgerTest, ASettledRecordEndsItsHoldAndMovesTheBalanceTheHoldsSee) {
  billing_->CreateAccount("ops", 9, 0);
  billing_->TopUp("ops", 9, 1000, "");
  HoldDecision a = billing_->Hold(HoldFor(9));
  HoldDecision b = billing_->Hold(HoldFor(9));
  ASSERT_TRUE(a.granted && b.granted);
  EXPECT_FALSE(billing_->Hold(HoldFor(9)).granted);    // 1000 - 900 left: 100
  UsageInput done = Usage("settles-a", 9, 1000, 100);  // 210
  done.hold_id = a.hold_id;
  billing_->Record({done});
  // Hold a ended (450 back) and its cost (210) left the balance: 1000 - 210 - 450 = 340.
  EXPECT_EQ(billing_->GetBalance(9).held_micros, 450);
  EXPECT_FALSE(billing_->Hold(HoldFor(9)).granted);
  HoldInput small = HoldFor(9, 1000, 300);  // 330
  EXPECT_TRUE(billing_->Hold(small).granted);
  // A redelivery of the record changes nothing.
  billing_->Record({done});
  EXPECT_EQ(billing_->GetBalance(9).balance_micros, 790);
  EXPECT_EQ(billing_->GetBalance(9).held_micros, 450 + 330);
  // A top-up through this replica counts at once.
  billing_->TopUp("ops", 9, 450, "");
  EXPECT_TRUE(billing_->Hold(HoldFor(9)).granted);
  // A released hold gives its money back.
  billing_->Release(b.hold_id);
  EXPECT_EQ(billing_->GetBalance(9).held_micros, 330 + 450);
}

TEST_F(LedgerTest, RefreshesRacingCommitsNeverDriftTheBalanceTheHoldsSee) {
  // Records of one user commit on this replica while refreshes reload its balance over and over
  // (and another replica tops it up, early on): the book's view must end equal to the database's
  // with no quiet refresh afterwards to paper over a charge counted twice or missed.
  billing_->CreateAccount("ops", 11, 0);
  billing_->TopUp("ops", 11, 10'000'000, "");
  ASSERT_TRUE(billing_->Hold(HoldFor(11)).granted);  // loads the account
  Billing other(*repo_, clock_, BillingOptions{std::chrono::minutes(10)});
  std::atomic<bool> done{false};
  std::atomic<int> refreshes{0};
  std::thread refresher([&] {
    while (!done) {
      billing_->RefreshBalances();
      ++refreshes;
    }
  });
  std::thread topups([&] {
    for (int i = 0; i < 20; ++i) other.TopUp("ops", 11, 1000, "");
  });
  int records = 0;
  for (int i = 0; i < 80; ++i) {
    if (i == 40) {
      // Every top-up is in before the second half, and refreshes have read it.
      topups.join();
      const int seen = refreshes;
      while (refreshes < seen + 2) std::this_thread::yield();
    }
    std::vector<UsageInput> batch;
    for (int k = 0; k < 1 + i % 3; ++k, ++records)
      batch.push_back(Usage("race-" + std::to_string(i) + "-" + std::to_string(k), 11));
    billing_->Record(batch);
  }
  done = true;
  refresher.join();
  Account a = billing_->GetBalance(11);
  EXPECT_EQ(a.balance_micros, 10'000'000 + 20 * 1000 - records * 450);
  ASSERT_TRUE(billing_->AvailableForHolds(11).has_value());
  EXPECT_EQ(*billing_->AvailableForHolds(11), a.balance_micros - a.held_micros);
  EXPECT_GT(refreshes.load(), 10) << "the refreshes did race the commits";
}

TEST_F(LedgerTest, ChargesAndTopUpsMadeByAnotherReplicaArriveWithTheRefresh) {
  billing_->CreateAccount("ops", 10, 0);
  billing_->TopUp("ops", 10, 1000, "");
  HoldDecision mine = billing_->Hold(HoldFor(10));
  ASSERT_TRUE(mine.granted);
  // Another replica (its own Billing over the same database) stores this hold's record, and a
  // top-up is made through it.
  Billing other(*repo_, clock_, BillingOptions{std::chrono::minutes(10)});
  UsageInput r = Usage("elsewhere", 10);  // 450
  r.hold_id = mine.hold_id;
  other.Record({r});
  other.TopUp("ops", 10, 2000, "");
  EXPECT_EQ(billing_->GetBalance(10).held_micros, 450) << "not known here yet";
  billing_->RefreshBalances();
  Account a = billing_->GetBalance(10);
  EXPECT_EQ(a.held_micros, 0);
  EXPECT_EQ(a.balance_micros, 1000 - 450 + 2000);
  // 2550 available: five holds of 450 fit, the sixth does not.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(billing_->Hold(HoldFor(10)).granted);
  EXPECT_FALSE(billing_->Hold(HoldFor(10)).granted);
}

TEST_F(LedgerTest, HoldsExpireAndARecordWhoseHoldExpiredStillSettles) {
  billing_->CreateAccount("ops", 5, 0);
  billing_->TopUp("ops", 5, 500, "");
  HoldDecision hold = billing_->Hold(HoldFor(5));
  ASSERT_TRUE(hold.granted);
  EXPECT_FALSE(billing_->Hold(HoldFor(5)).granted);
  clock_.Advance(std::chrono::milliseconds(600'000 - 1));
  EXPECT_FALSE(billing_->Hold(HoldFor(5)).granted) << "not expired 1 ms before the bound";
  EXPECT_EQ(billing_->GetBalance(5).held_micros, 450);
  clock_.Advance(std::chrono::milliseconds(1));
  EXPECT_EQ(billing_->GetBalance(5).held_micros, 0);
  HoldDecision again = billing_->Hold(HoldFor(5));
  EXPECT_TRUE(again.granted) << "the first hold expired";
  // The sweeper rewrites what expired for users who never came back.
  billing_->CreateAccount("ops", 15, 0);
  billing_->TopUp("ops", 15, 1000, "");
  ASSERT_TRUE(billing_->Hold(HoldFor(15)).granted);
  EXPECT_EQ(billing_->ExpireHolds(), 0);
  clock_.Advance(std::chrono::milliseconds(600'000));
  EXPECT_EQ(billing_->ExpireHolds(), 2) << "user 15's, and user 5's second hold";
  EXPECT_EQ(billing_->GetBalance(15).held_micros, 0);
  clock_.SetUnixMillis(kT0 + 600'000);

  // The late record of the expired hold is still charged, and settles its hold.
  UsageInput late = Usage("late", 5);
  late.hold_id = hold.hold_id;
  late.started_at_ms = kT0;
  billing_->Record({late});
  Account a = billing_->GetBalance(5);
  EXPECT_EQ(a.balance_micros, 50);
  // Settling the live hold replaces it with the actual (smaller) cost.
  UsageInput actual = Usage("actual", 5, 100, 10);  // 15000 + 6000 -> 21
  actual.hold_id = again.hold_id;
  billing_->Record({actual});
  a = billing_->GetBalance(5);
  EXPECT_EQ(a.held_micros, 0);
  EXPECT_EQ(a.balance_micros, 50 - 21);
}

TEST_F(LedgerTest, BodiesAreStoredOnceAndListedOnlyWhenAskedFor) {
  UsageInput with = Usage("with-bodies", 1);
  with.request_body = R"({"messages":[{"role":"user","content":"hi"}]})";
  with.response_body = R"({"choices":[{"message":{"content":"hello"}}]})";
  UsageInput without = Usage("without-bodies", 1);
  without.started_at_ms = with.started_at_ms + 1;
  billing_->Record({with, without});
  // Redelivered with other bodies: the first delivery stays.
  UsageInput again = with;
  again.request_body = "changed";
  billing_->Record({again});
  EXPECT_EQ(Count("SELECT count(*) FROM usage_bodies"), 1);

  RecordQuery q;
  q.user_id = 1;
  auto rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].record.request_id, "without-bodies");  // newest first
  EXPECT_FALSE(rows[0].has_bodies);
  EXPECT_TRUE(rows[1].has_bodies);
  EXPECT_EQ(rows[1].record.request_body, "");  // not asked for
  EXPECT_EQ(rows[1].cost_micros, 450);
  EXPECT_EQ(rows[1].record.tokens.prompt, 1000);
  EXPECT_EQ(rows[1].record.client_ip, "203.0.113.7");

  q.include_bodies = true;
  q.request_id = "with-bodies";
  rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.request_body, with.request_body);
  EXPECT_EQ(rows[0].record.response_body, with.response_body);
  EXPECT_FALSE(rows[0].record.bodies_truncated);

  q = RecordQuery{};
  q.api_key_id = 10;
  q.before_ms = with.started_at_ms + 1;  // pages past the newer one
  rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.request_id, "with-bodies");
  q.limit = 5000;
  EXPECT_THROW(billing_->ListRecords(q), Error);
}

TEST_F(LedgerTest, TextPostgreSQLWouldRefuseIsCleanedNotRedeliveredForever) {
  // NUL bytes and invalid UTF-8 (in a body, a model name, an address) must not fail the batch.
  UsageInput odd = Usage("odd-text", 1);
  odd.model = std::string("gpt\0-4o\xff", 8);
  odd.client_ip = std::string("1.2.3.4\0", 8);
  odd.request_body = std::string("{\"a\":\"\0\xc3\"}", 10);
  odd.response_body = std::string(2 << 20, 'x');  // over the 1 MiB bound
  UsageInput plain = Usage("plain", 1);
  EXPECT_EQ(billing_->Record({odd, plain}), (std::vector<bool>{true, true}));
  RecordQuery q;
  q.request_id = "odd-text";
  q.include_bodies = true;
  auto rows = billing_->ListRecords(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].record.model, "gpt\xEF\xBF\xBD-4o\xEF\xBF\xBD");
  EXPECT_TRUE(rows[0].record.bodies_truncated);
  EXPECT_EQ(rows[0].record.response_body.size(), 1u << 20);
}

TEST_F(LedgerTest, ARecordWithoutAnAccountIsStillCharged) {
  billing_->Record({Usage("orphan", 9)});
  Account a = billing_->GetBalance(9);
  EXPECT_EQ(a.balance_micros, -450);
  EXPECT_FALSE(billing_->Hold(HoldFor(9, 1, 0)).granted) << "overdrawn";
}

TEST_F(LedgerTest, UsageReportByUserKeyModelAndDay) {
  UsageInput a1 = Usage("a1", 1);           // day 0, user 1, key 10
  UsageInput a2 = Usage("a2", 1, 2000, 0);  // 300
  a2.api_key_id = 11;
  UsageInput b1 = Usage("b1", 2, 1000, 500, 1000);  // 75 + 300 = 375
  b1.started_at_ms = kT0 + kDay;
  UsageInput b2 = Usage("b2", 2);
  b2.model = "other";
  b2.started_at_ms = kT0 + kDay;
  UsageInput outside = Usage("outside", 2);
  outside.started_at_ms = kT0 + 5 * kDay;
  billing_->Record({a1, a2, b1, b2, outside});

  auto total = billing_->UsageReport("2025-11-22", "2025-11-23", {}, 0);
  ASSERT_EQ(total.size(), 1u);
  EXPECT_EQ(total[0].requests, 4);
  EXPECT_EQ(total[0].cost_micros, 450 + 300 + 375 + 0);
  EXPECT_EQ(total[0].tokens.prompt, 5000);
  EXPECT_EQ(total[0].tokens.completion, 1500);
  EXPECT_EQ(total[0].tokens.cached, 1000);

  auto by_user = billing_->UsageReport("2025-11-22", "2025-11-23", {Dimension::kUser}, 0);
  ASSERT_EQ(by_user.size(), 2u);
  EXPECT_EQ(*by_user[0].user_id, 1);
  EXPECT_EQ(by_user[0].cost_micros, 750);
  EXPECT_FALSE(by_user[0].day.has_value());
  EXPECT_EQ(*by_user[1].user_id, 2);
  EXPECT_EQ(by_user[1].requests, 2);

  auto by_day_model =
      billing_->UsageReport("2025-11-22", "2025-11-30", {Dimension::kModel, Dimension::kDay}, 0);
  ASSERT_EQ(by_day_model.size(), 4u);
  EXPECT_EQ(FormatDay(DayFromNumber(*by_day_model[0].day)), "2025-11-22");
  EXPECT_EQ(*by_day_model[0].model, "gpt-4o-mini");
  EXPECT_EQ(by_day_model[0].requests, 2);
  EXPECT_EQ(FormatDay(DayFromNumber(*by_day_model[1].day)), "2025-11-23");
  EXPECT_EQ(*by_day_model[1].model, "gpt-4o-mini");
  EXPECT_EQ(FormatDay(DayFromNumber(*by_day_model[2].day)), "2025-11-23");
  EXPECT_EQ(*by_day_model[2].model, "other");
  EXPECT_EQ(FormatDay(DayFromNumber(*by_day_model[3].day)), "2025-11-27");

  auto by_key = billing_->UsageReport("2025-11-22", "2025-11-22", {Dimension::kKey}, 1);
  ASSERT_EQ(by_key.size(), 2u);
  EXPECT_EQ(*by_key[0].api_key_id, 10);
  EXPECT_EQ(by_key[0].cost_micros, 450);
  EXPECT_EQ(*by_key[1].api_key_id, 11);
  EXPECT_EQ(by_key[1].cost_micros, 300);

  // A user's own usage per day (what the edge's usage endpoints show), one key or all.
  auto own = billing_->UserUsage(1, 11, "2025-11-01", "2025-11-30");
  ASSERT_EQ(own.size(), 1u);
  EXPECT_EQ(FormatDay(DayFromNumber(*own[0].day)), "2025-11-22");
  EXPECT_EQ(own[0].cost_micros, 300);
  EXPECT_EQ(billing_->UserUsage(2, 0, "2025-11-01", "2025-11-30").size(), 2u);
  EXPECT_THROW(billing_->UserUsage(0, 0, "2025-11-01", "2025-11-30"), Error)
      << "never every user on the data path";

  EXPECT_THROW(billing_->UsageReport("2025-11-23", "2025-11-22", {}, 0), Error);
  EXPECT_THROW(billing_->UsageReport("22/11/2025", "2025-11-22", {}, 0), Error);
}

TEST_F(LedgerTest, AdminActionsAreAuditedAndTheAuditLogIsAppendOnly) {
  billing_->CreateAccount("alice (ipv4:127.0.0.1:1)", 1, 0);
  billing_->TopUp("alice (ipv4:127.0.0.1:1)", 1, 2500, "invoice 42");
  billing_->SetCreditLimit("bob", 1, 100);
  billing_->SetMultiplier("bob", 1, 1'200'000);
  EXPECT_THROW(billing_->TopUp("bob", 99, 1, ""), Error) << "no account";
  auto log = billing_->ListAuditLog(0);
  ASSERT_EQ(log.size(), 5u) << "set_price in SetUp + 4; the refused top-up left nothing";
  EXPECT_EQ(log[0].action, "set_multiplier");
  EXPECT_EQ(log[0].actor, "bob");
  EXPECT_EQ(log[0].target, "user:1");
  EXPECT_EQ(log[2].action, "top_up");
  EXPECT_EQ(log[2].actor, "alice (ipv4:127.0.0.1:1)");
  EXPECT_NE(log[2].details.find("\"amount_micros\": 2500"), std::string::npos) << log[2].details;
  EXPECT_EQ(log[3].action, "create_account");
  EXPECT_EQ(log[4].action, "set_price");
  EXPECT_EQ(log[4].at_ms, kT0);

  for (const char* sql :
       {"UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "TRUNCATE audit_log"}) {
    EXPECT_THROW(pool_->Run([&](pqxx::connection& conn) {
      pqxx::work tx(conn);
      tx.exec(sql);
      tx.commit();
    }),
                 pqxx::sql_error)
        << sql;
  }
  EXPECT_EQ(Count("SELECT count(*) FROM audit_log WHERE actor <> 'mallory'"), 5);
}

TEST_F(LedgerTest, GroupCommitSharesTransactionsAndAnswersEveryCall) {
  Ingestor ingestor([this](std::vector<UsageInput> r) { return billing_->Record(std::move(r)); },
                    500);
  constexpr int kCalls = 200;
  std::atomic<int> acked{0}, stored{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int c = 0; c < kCalls / 4; ++c) {
        std::vector<UsageInput> batch = {
            Usage("g-" + std::to_string(t) + "-" + std::to_string(c), 8), Usage("g-shared", 8)};
        std::atomic<bool> done{false};
        ingestor.Submit(std::move(batch), [&](IngestReply reply) {
          if (reply.ok) {
            ++acked;
            for (bool s : reply.stored) stored += s;
          }
          done = true;
        });
        while (!done) std::this_thread::yield();
      }
    });
  for (auto& t : threads) t.join();
  ingestor.Stop();
  EXPECT_EQ(acked.load(), kCalls);
  EXPECT_EQ(stored.load(), kCalls + 1) << "g-shared is stored once";
  EXPECT_EQ(Count("SELECT count(*) FROM usage_records"), kCalls + 1);
  EXPECT_LE(ingestor.transactions(), kCalls);
}

}  // namespace
}  // namespace tollgate::billing
