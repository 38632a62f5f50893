// Leases as pure logic: a fake clock, an in-memory repository. What an edge admits from a lease
// and what the replica admits itself never pass a limit together, in any 60 s interval.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <random>
#include <set>

#include "test/fake_clock.h"
#include "test/memory_quota_repository.h"
#include "tollgate/quota/limiter.h"

namespace tollgate::quota {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::time_t kT0 = 1795348800;  // 2026-11-22 12:00:00 UTC

class LeaseTest : public ::testing::Test {
 protected:
  void Make(LimiterOptions o) {
    if (o.lease_ttl == milliseconds(0)) o.lease_ttl = seconds(1);
    limiter_ = std::make_unique<Limiter>(o, clock_, repo_);
  }
  LeaseGrant Lease(SubjectKind kind, const std::string& subject, int64_t requests, int64_t tokens,
                   int64_t min_tokens = 1) {
    return limiter_->Lease({kind, subject, requests, tokens, min_tokens});
  }
  AdmitDecision Admit(int64_t tokens, Subjects s) {
    return limiter_->Admit({"req-" + std::to_string(++n_), s, tokens});
  }
  void Settle(const std::string& request_id, const std::string& reservation, int64_t actual,
              Subjects subjects, int64_t lease_estimate = 0) {
    std::vector<SettleInput> in = {{request_id, reservation, actual, subjects, lease_estimate}};
    auto prepared = limiter_->PrepareSettle(in);
    std::vector<bool> fresh(prepared.size(), false);
    for (size_t i : repo_.CommitSettlements(prepared)) fresh[i] = true;
    limiter_->ApplySettled(in, prepared, fresh);
  }

  testing::FakeClock clock_{std::chrono::system_clock::from_time_t(kT0)};
  MemoryQuotaRepository repo_;
  std::unique_ptr<Limiter> limiter_;
  int n_ = 0;
};

TEST_F(LeaseTest, ALeaseIsAShareOfTheHeadroomAndNoneCloseToTheLimit) {
  LimiterOptions o;
  o.key_defaults.rpm = 1000;
  o.lease_min_headroom = 64;
  Make(o);
  LeaseGrant g = Lease(SubjectKind::kKey, "k1", 500, 1000);
  ASSERT_TRUE(g.granted);
  EXPECT_EQ(g.requests, 1000 / kLeaseShare);
  EXPECT_EQ(g.tokens, kLeaseUnlimited);  // no token limit
  EXPECT_EQ(g.requests_window.remaining, 1000 - 125);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").window_requests, 125);
  // Each further lease is a share of what is left, so they shrink...
  int64_t leased = 125;
  for (;;) {
    LeaseGrant next = Lease(SubjectKind::kKey, "k1", 500, 1000);
    if (!next.granted) break;
    EXPECT_LE(next.requests, (1000 - leased) / kLeaseShare);
    leased += next.requests;
  }
  // ...and stop once the headroom is below lease_min_headroom (the last one left at least 7/8 of
  // it): those requests are admitted here, one at a time.
  EXPECT_GE(1000 - leased, 64 - 64 / kLeaseShare);
  int admitted = 0;
  while (!Admit(1, {"k1", "", ""}).denial) ++admitted;
  EXPECT_EQ(leased + admitted, 1000);
}

TEST_F(LeaseTest, NoLeaseWhenTheLimitIsBelowTheMinimumHeadroom) {
  LimiterOptions o;
  o.key_defaults.rpm = 20;
  Make(o);
  EXPECT_FALSE(Lease(SubjectKind::kKey, "k1", 5, 100).granted);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").window_requests, 0);
}

TEST_F(LeaseTest, ALeaseCountsInTheWindowUntilAMinuteAfterItsDeadline) {
  LimiterOptions o;
  o.key_defaults.rpm = 800;
  o.lease_ttl = seconds(2);
  Make(o);
  ASSERT_TRUE(Lease(SubjectKind::kKey, "k1", 100, 100).granted);
  // Its requests may happen as late as t0 + 2 s, so it holds its place until t0 + 62 s.
  clock_.Advance(milliseconds(61900));
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").window_requests, 100);
  clock_.Advance(milliseconds(200));
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").window_requests, 0);
}

TEST_F(LeaseTest, AReturnGivesBackWhatWasNotUsedAndOnlyOnce) {
  LimiterOptions o;
  o.key_defaults.rpm = 800;
  o.key_defaults.tpm = 80000;
  o.key_defaults.monthly_tokens = 1000000;
  Make(o);
  LeaseGrant g = Lease(SubjectKind::kKey, "k1", 100, 10000);
  ASSERT_TRUE(g.granted);
  EXPECT_EQ(g.requests, 100);
  EXPECT_EQ(g.tokens, 10000);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").reserved_tokens, 10000);
  // The edge admitted 30 requests of 100 tokens from it, then returns the rest.
  limiter_->ReturnLease({g.lease_id, true, 70, 7000, 0, 0});
  limiter_->ReturnLease({g.lease_id, true, 70, 7000, 0, 0});  // a repeat changes nothing
  auto u = limiter_->Usage(SubjectKind::kKey, "k1");
  EXPECT_EQ(u.window_requests, 30);
  EXPECT_EQ(u.window_tokens, 3000);
  EXPECT_EQ(u.reserved_tokens, 3000);  // the 30 running requests
  // One of them settles at 40 tokens: its estimate leaves the reservation, the window keeps 40.
  Settle("a", g.lease_id, 40, {"k1", "", ""}, 100);
  Settle("a", g.lease_id, 40, {"k1", "", ""}, 100);  // redelivered: counted once
  u = limiter_->Usage(SubjectKind::kKey, "k1");
  EXPECT_EQ(u.reserved_tokens, 2900);
  EXPECT_EQ(u.monthly_tokens, 40);
  EXPECT_EQ(u.window_tokens, 2940);
}

TEST_F(LeaseTest, AKeysAndAUsersLeaseSettleTogetherOnce) {
  LimiterOptions o;
  o.key_defaults.monthly_tokens = 1000000;
  o.user_defaults.monthly_tokens = 1000000;
  Make(o);
  LeaseGrant key = Lease(SubjectKind::kKey, "k1", 10, 1000, 100);
  LeaseGrant user = Lease(SubjectKind::kUser, "u1", 10, 1000, 100);
  ASSERT_TRUE(key.granted && user.granted);
  const std::string both = key.lease_id + "+" + user.lease_id;
  Settle("r1", both, 70, {"k1", "u1", ""}, 100);
  Settle("r1", both, 70, {"k1", "u1", ""}, 100);  // redelivered
  for (auto [kind, subject] : {std::pair{SubjectKind::kKey, "k1"}, {SubjectKind::kUser, "u1"}}) {
    auto u = limiter_->Usage(kind, subject);
    EXPECT_EQ(u.monthly_tokens, 70) << subject;
    EXPECT_EQ(u.reserved_tokens, 900) << subject;
  }
}

TEST_F(LeaseTest, ARefusalRecallsTheSubjectsLeasesUntilReturned) {
  LimiterOptions o;
  o.key_defaults.rpm = 100;
  Make(o);
  LeaseGrant g = Lease(SubjectKind::kKey, "k1", 12, 1000);
  ASSERT_TRUE(g.granted);
  LeaseGrant other = Lease(SubjectKind::kKey, "k2", 12, 1000);
  ASSERT_TRUE(other.granted);
  EXPECT_TRUE(limiter_->RecalledLeases().empty());
  while (!Admit(1, {"k1", "", ""}).denial) {
  }
  // k1 was refused while its lease was out: that one is wanted back, k2's is not.
  EXPECT_EQ(limiter_->RecalledLeases(), std::vector<std::string>{g.lease_id});
  limiter_->ReturnLease({g.lease_id, true, g.requests, 0, 0, 0});
  EXPECT_TRUE(limiter_->RecalledLeases().empty());
  EXPECT_FALSE(Admit(1, {"k1", "", ""}).denial) << "its capacity came back";
}

TEST_F(LeaseTest, AnUnreturnedLeaseHoldsItsTokensUntilItsDeadlinePlusTheReservationTtl) {
  LimiterOptions o;
  o.user_defaults.monthly_tokens = 80000;
  o.reservation_ttl = seconds(30);
  Make(o);
  LeaseGrant g = Lease(SubjectKind::kUser, "u1", 100, 100000, 500);
  ASSERT_TRUE(g.granted);
  EXPECT_EQ(g.tokens, 10000);
  EXPECT_EQ(g.requests, kLeaseUnlimited);
  // The edge died: nothing comes back. Its requests may run for reservation_ttl after the
  // lease's deadline, so the tokens stay reserved until then, then go back.
  clock_.Advance(seconds(30));
  EXPECT_EQ(limiter_->Usage(SubjectKind::kUser, "u1").reserved_tokens, 10000);
  clock_.Advance(seconds(1) + milliseconds(1));
  limiter_->Expire();
  EXPECT_EQ(limiter_->Usage(SubjectKind::kUser, "u1").reserved_tokens, 0);
  EXPECT_EQ(limiter_->live_leases(), 0u);
  // A settlement after that still charges the subject it names.
  Settle("late", g.lease_id, 300, {"", "u1", ""}, 500);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kUser, "u1").monthly_tokens, 300);
}

TEST_F(LeaseTest, AMonthlyQuotaIsNeverOvershotByLeasesAndAdmissionsTogether) {
  LimiterOptions o;
  o.user_defaults.monthly_tokens = 100000;
  Make(o);
  int64_t used = 0;  // worst case of everything admitted, leased or not
  std::vector<LeaseGrant> leases;
  for (int round = 0; round < 200; ++round) {
    LeaseGrant g = Lease(SubjectKind::kUser, "u1", 20, 20 * 500, 500);
    if (g.granted) {
      leases.push_back(g);
      used += g.tokens;  // the edge may spend all of it
    }
    if (!Admit(500, {"", "u1", ""}).denial) used += 500;
    auto u = limiter_->Usage(SubjectKind::kUser, "u1");
    ASSERT_LE(u.monthly_tokens + u.reserved_tokens, 100000);
    ASSERT_LE(used, 100000);
  }
  // Close to the quota no lease is granted: the last requests were decided one at a time.
  EXPECT_FALSE(Lease(SubjectKind::kUser, "u1", 20, 20 * 500, 500).granted);
  EXPECT_GT(used, 100000 - 500 * kLeaseShare);
}

// Two edges lease and admit at random times while the replica admits others itself: the
// requests that really ran never exceed RPM in any 60 s interval.
TEST_F(LeaseTest, RandomInterleavingNeverPassesTheRpmInAnyMinute) {
  LimiterOptions o;
  o.key_defaults.rpm = 300;
  o.lease_min_headroom = 16;
  o.lease_ttl = seconds(2);
  Make(o);
  std::mt19937 rng(7);
  struct Held {
    LeaseGrant grant;
    Clock::SteadyTime until;
    int64_t left = 0;
  };
  std::vector<Held> held[2];
  std::vector<Clock::SteadyTime> ran;  // when each admitted request started
  const auto start = clock_.SteadyNow();
  while (clock_.SteadyNow() - start < std::chrono::minutes(5)) {
    clock_.Advance(milliseconds(rng() % 400));
    const auto now = clock_.SteadyNow();
    for (auto& edge : held) {
      // Spend from live leases; return the expired ones with what they did not use.
      for (auto it = edge.begin(); it != edge.end();) {
        if (now >= it->until) {
          limiter_->ReturnLease({it->grant.lease_id, true, it->left, 0, 0, 0});
          it = edge.erase(it);
          continue;
        }
        int64_t spend = std::min<int64_t>(it->left, rng() % 8);
        for (int64_t k = 0; k < spend; ++k) ran.push_back(now);
        it->left -= spend;
        ++it;
      }
      if (rng() % 3 == 0) {
        LeaseGrant g = Lease(SubjectKind::kKey, "k1", 1 + rng() % 60, 1000);
        if (g.granted) edge.push_back({g, now + g.ttl, g.requests});
      }
    }
    for (int k = rng() % 5; k > 0; --k)
      if (!Admit(1, {"k1", "", ""}).denial) ran.push_back(now);
  }
  std::sort(ran.begin(), ran.end());
  ASSERT_GT(ran.size(), 1000u);
  size_t first = 0;
  size_t busiest = 0;
  for (size_t i = 0; i < ran.size(); ++i) {
    while (ran[first] <= ran[i] - seconds(60)) ++first;
    busiest = std::max(busiest, i - first + 1);
  }
  EXPECT_LE(busiest, 300u);
  EXPECT_GT(busiest, 200u);  // and the limit was actually reached
}

}  // namespace
}  // namespace tollgate::quota
