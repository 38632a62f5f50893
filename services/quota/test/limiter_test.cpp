// The limiter as pure logic: a fake clock, an in-memory repository.
#include "tollgate/quota/limiter.h"

#include <gtest/gtest.h>

#include <ctime>
#include <limits>
#include <map>
#include <set>

#include "test/fake_clock.h"
#include "test/memory_quota_repository.h"

namespace tollgate::quota {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// 2026-11-22 12:00:00 UTC.
constexpr std::time_t kT0 = 1795348800;

class LimiterTest : public ::testing::Test {
 protected:
  void Make(LimiterOptions o) { limiter_ = std::make_unique<Limiter>(o, clock_, repo_); }

  AdmitDecision Admit(int64_t tokens = 10, std::string key = "k1", std::string ip = "",
                      std::string user = "") {
    return limiter_->Admit({"req-" + std::to_string(++n_), {key, user, ip}, tokens});
  }

  // Settles through the same two phases as the gRPC service, with the fake repository.
  void Settle(const std::string& request_id, const std::string& reservation, int64_t actual,
              Subjects subjects = {"k1", "", ""}) {
    std::vector<SettleInput> in = {{request_id, reservation, actual, subjects}};
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

TEST_F(LimiterTest, NoDoubleBurstAtTheEdgeOfAMinute) {
  LimiterOptions o;
  o.key_defaults.rpm = 10;
  Make(o);
  // Ten requests late in one minute...
  clock_.Advance(seconds(50));
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(Admit().denial) << i;
  EXPECT_TRUE(Admit().denial);
  // ...and right after the minute boundary a fixed window would admit ten more. Not this one.
  clock_.Advance(seconds(11));
  auto d = Admit();
  ASSERT_TRUE(d.denial);
  EXPECT_EQ(d.denial->limit, LimitKind::kRpm);
  EXPECT_EQ(d.denial->subject, SubjectKind::kKey);
  EXPECT_FALSE(d.denial->insufficient_quota());
  // The oldest entry leaves the window 60 s after it came in: 49 s from now.
  EXPECT_EQ(d.denial->retry_after, seconds(49));
  clock_.Advance(seconds(49) - milliseconds(1));
  EXPECT_TRUE(Admit().denial);
  clock_.Advance(milliseconds(1));
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(Admit().denial) << i;
  EXPECT_TRUE(Admit().denial);
}

TEST_F(LimiterTest, SlidingWindowFreesUnitsOneByOne) {
  LimiterOptions o;
  o.key_defaults.rpm = 3;
  Make(o);
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(Admit().denial);
    clock_.Advance(seconds(10));
  }
  // t=30: full. The first request (t=0) leaves at t=60.
  auto d = Admit();
  ASSERT_TRUE(d.denial);
  EXPECT_EQ(d.denial->retry_after, seconds(30));
  clock_.Advance(seconds(30));
  EXPECT_FALSE(Admit().denial);
  EXPECT_TRUE(Admit().denial);
}

// Windows run on steady time: setting the wall clock (NTP, an operator) neither frees nor
// refills them; only time passing does.
TEST_F(LimiterTest, WindowsIgnoreWallClockJumps) {
  LimiterOptions o;
  o.key_defaults.rpm = 2;
  Make(o);
  EXPECT_FALSE(Admit().denial);
  EXPECT_FALSE(Admit().denial);
  clock_.SetWall(std::chrono::system_clock::from_time_t(kT0 + 120));
  auto d = Admit();
  ASSERT_TRUE(d.denial);
  EXPECT_EQ(d.denial->retry_after, seconds(60));
  clock_.SetWall(std::chrono::system_clock::from_time_t(kT0 - 3600));
  EXPECT_TRUE(Admit().denial);
  clock_.Advance(seconds(60));
  EXPECT_FALSE(Admit().denial);
}

TEST_F(LimiterTest, TokensPerMinuteCountReservedThenActualTokens) {
  LimiterOptions o;
  o.key_defaults.tpm = 100;
  Make(o);
  auto a = Admit(60);
  ASSERT_FALSE(a.denial);
  EXPECT_EQ(a.tokens.limit, 100);
  EXPECT_EQ(a.tokens.remaining, 40);
  EXPECT_EQ(a.tokens.reset, seconds(60));
  auto b = Admit(60);
  ASSERT_TRUE(b.denial);
  EXPECT_EQ(b.denial->limit, LimitKind::kTpm);
  // The actual usage was 20: 80 left.
  Settle("req-1", a.reservation_id, 20);
  EXPECT_FALSE(Admit(60).denial);
  EXPECT_TRUE(Admit(21).denial);
  // Bigger than the limit itself: never fits, retry in a whole window.
  auto huge = Admit(1000);
  ASSERT_TRUE(huge.denial);
  EXPECT_EQ(huge.denial->retry_after, seconds(60));
}

TEST_F(LimiterTest, AHugeEstimateSaturatesInsteadOfWrappingPastTheLimits) {
  LimiterOptions o;
  o.key_defaults.tpm = 100;
  o.key_defaults.monthly_tokens = 1000;
  Make(o);
  ASSERT_FALSE(Admit(50).denial);
  // 50 + int64's largest value wrapped negative and fit every limit.
  auto huge = Admit(std::numeric_limits<int64_t>::max());
  ASSERT_TRUE(huge.denial);
  EXPECT_EQ(huge.denial->limit, LimitKind::kTpm);
  LimiterOptions unlimited_rate;
  unlimited_rate.key_defaults.monthly_tokens = 1000;
  Make(unlimited_rate);
  ASSERT_FALSE(Admit(50).denial);
  huge = Admit(std::numeric_limits<int64_t>::max());
  ASSERT_TRUE(huge.denial);
  EXPECT_EQ(huge.denial->limit, LimitKind::kMonthly);
}

TEST_F(LimiterTest, ReleaseRestoresHeadroom) {
  LimiterOptions o;
  o.key_defaults.rpm = 1;
  o.key_defaults.tpm = 100;
  o.key_defaults.monthly_tokens = 100;
  Make(o);
  auto a = Admit(100);
  ASSERT_FALSE(a.denial);
  EXPECT_TRUE(Admit(1).denial);
  EXPECT_TRUE(limiter_->Release(a.reservation_id));
  EXPECT_FALSE(limiter_->Release(a.reservation_id));
  EXPECT_EQ(limiter_->live_reservations(), 0u);
  EXPECT_FALSE(Admit(100).denial);
}

TEST_F(LimiterTest, ReservationsExpireAndSettleAfterExpiryIsHarmless) {
  LimiterOptions o;
  o.key_defaults.monthly_tokens = 100;
  o.reservation_ttl = seconds(30);
  Make(o);
  auto a = Admit(100);
  ASSERT_FALSE(a.denial);
  auto denied = Admit(1);
  ASSERT_TRUE(denied.denial);
  EXPECT_EQ(denied.denial->limit, LimitKind::kMonthly);
  EXPECT_TRUE(denied.denial->insufficient_quota());
  // 2026-12-01 00:00 UTC is 8 days 12 hours away.
  EXPECT_EQ(denied.denial->retry_after, std::chrono::hours(8 * 24 + 12));
  clock_.Advance(seconds(31));
  limiter_->Expire();
  EXPECT_EQ(limiter_->live_reservations(), 0u);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").reserved_tokens, 0);
  // The crashed edge's tokens came back.
  auto b = Admit(60);
  ASSERT_FALSE(b.denial);
  // The late Settle of the expired one still charges its actual usage, once.
  Settle("req-1", a.reservation_id, 30);
  Settle("req-1", a.reservation_id, 30);
  auto u = limiter_->Usage(SubjectKind::kKey, "k1");
  EXPECT_EQ(u.monthly_tokens, 30);
  EXPECT_EQ(u.reserved_tokens, 60);
  EXPECT_TRUE(Admit(11).denial);
  EXPECT_FALSE(Admit(10).denial);
}

TEST_F(LimiterTest, SettleIsIdempotent) {
  LimiterOptions o;
  o.key_defaults.monthly_tokens = 1000;
  o.user_defaults.monthly_tokens = 1000;
  Make(o);
  auto a = Admit(100, "k1", "", "u1");
  ASSERT_FALSE(a.denial);
  Settle("req-1", a.reservation_id, 70, {"k1", "u1", ""});
  Settle("req-1", a.reservation_id, 70, {"k1", "u1", ""});
  Settle("req-1", a.reservation_id, 70, {"k1", "u1", ""});
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").monthly_tokens, 70);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kUser, "u1").monthly_tokens, 70);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kUser, "u1").daily_tokens, 70);
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").reserved_tokens, 0);
}

TEST_F(LimiterTest, AClientRepeatingItsRequestIdIsChargedForEveryRequest) {
  LimiterOptions o;
  o.key_defaults.monthly_tokens = 1000;
  Make(o);
  auto a = limiter_->Admit({"client-chosen-id", {"k1", "", ""}, 100});
  auto b = limiter_->Admit({"client-chosen-id", {"k1", "", ""}, 100});
  ASSERT_FALSE(a.denial);
  ASSERT_FALSE(b.denial);
  Settle("client-chosen-id", a.reservation_id, 40);
  Settle("client-chosen-id", b.reservation_id, 50);
  Settle("client-chosen-id", b.reservation_id, 50);  // a retry of the same settlement
  EXPECT_EQ(limiter_->Usage(SubjectKind::kKey, "k1").monthly_tokens, 90);
}

TEST_F(LimiterTest, UserQuotaSpansKeysAndIpLimitsSpanUsers) {
  LimiterOptions o;
  o.user_defaults.monthly_tokens = 100;
  o.ip_defaults.rpm = 2;
  Make(o);
  EXPECT_FALSE(Admit(60, "k1", "", "u1").denial);
  auto d = Admit(60, "k2", "", "u1");
  ASSERT_TRUE(d.denial);
  EXPECT_EQ(d.denial->subject, SubjectKind::kUser);
  EXPECT_FALSE(Admit(1, "k3", "10.0.0.1").denial);
  EXPECT_FALSE(Admit(1, "k4", "10.0.0.1").denial);
  auto ip = Admit(1, "k5", "10.0.0.1");
  ASSERT_TRUE(ip.denial);
  EXPECT_EQ(ip.denial->subject, SubjectKind::kIp);
}

TEST_F(LimiterTest, DailyQuotaResetsAtMidnightUtc) {
  LimiterOptions o;
  o.key_defaults.daily_tokens = 100;
  Make(o);
  auto a = Admit(100);
  Settle("req-1", a.reservation_id, 100);
  auto d = Admit(1);
  ASSERT_TRUE(d.denial);
  EXPECT_EQ(d.denial->limit, LimitKind::kDaily);
  EXPECT_EQ(d.denial->retry_after, std::chrono::hours(12));
  clock_.Advance(std::chrono::hours(12));
  EXPECT_FALSE(Admit(100).denial);
}

TEST_F(LimiterTest, UsageLoadedFromTheRepositoryOnFirstTouch) {
  LimiterOptions o;
  o.key_defaults.monthly_tokens = 100;
  Make(o);
  repo_.usage[{SubjectKind::kKey, "k1", PeriodKind::kMonth, "2026-11"}] = 95;
  EXPECT_TRUE(Admit(6).denial);
  EXPECT_FALSE(Admit(5).denial);
}

TEST_F(LimiterTest, OverridesReplaceDefaultsAndZeroMeansUnlimited) {
  LimiterOptions o;
  o.key_defaults.rpm = 1;
  Make(o);
  PolicyOverride p;
  p.kind = SubjectKind::kKey;
  p.subject = "vip";
  p.rpm = 0;
  limiter_->PutPolicy(p);
  for (int i = 0; i < 50; ++i) EXPECT_FALSE(Admit(1, "vip").denial);
  EXPECT_TRUE(limiter_->Policy(SubjectKind::kKey, "vip").overridden);
  limiter_->RemovePolicy(SubjectKind::kKey, "vip");
  EXPECT_TRUE(Admit(1, "vip").denial);
}

TEST_F(LimiterTest, HeadersReportTheTightestWindow) {
  LimiterOptions o;
  o.key_defaults.rpm = 10;
  o.ip_defaults.rpm = 3;
  o.key_defaults.tpm = 1000;
  Make(o);
  auto a = Admit(100, "k1", "10.0.0.9");
  ASSERT_FALSE(a.denial);
  EXPECT_EQ(a.requests.limit, 3);
  EXPECT_EQ(a.requests.remaining, 2);
  EXPECT_EQ(a.tokens.limit, 1000);
  EXPECT_EQ(a.tokens.remaining, 900);
}

TEST(PeriodTest, CalendarPeriodsInUtc) {
  auto t = std::chrono::system_clock::from_time_t(1798761599);  // 2026-12-31 23:59:59 UTC
  EXPECT_EQ(PeriodOf(PeriodKind::kMonth, t), "2026-12");
  EXPECT_EQ(PeriodOf(PeriodKind::kDay, t), "2026-12-31");
  EXPECT_EQ(NextPeriodStart(PeriodKind::kMonth, t), t + seconds(1));
  EXPECT_EQ(NextPeriodStart(PeriodKind::kDay, t), t + seconds(1));
}

}  // namespace
}  // namespace tollgate::quota
