// The key pool: smooth weighted round-robin, breakers, 429 cooldowns, aliases,
// all on a fake clock (no sleeps).
#include "tollgate/router/key_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

namespace tollgate::router {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class FakeClock final : public Clock {
 public:
  TimePoint Now() const override { return now_; }
  void Advance(std::chrono::nanoseconds d) { now_ += d; }

 private:
  TimePoint now_ = TimePoint() + std::chrono::hours(1000);
};

// A catalogue with one model "m" served by provider 1 with the given weights
// (key ids 1, 2, ...). The test opener's plaintext is "sk-key-<id>".
Catalogue OneModel(const std::vector<int32_t>& weights) {
  Catalogue c;
  c.providers.push_back(
      {1, "p1", ProviderType::kOpenAi, "https://api.example.com/v1", "", true, 100});
  for (size_t i = 0; i < weights.size(); ++i) {
    UpstreamKeyRecord k;
    k.id = static_cast<int64_t>(i + 1);
    k.provider_id = 1;
    k.name = "k" + std::to_string(k.id);
    k.secret = {"ct", "nonce-" + std::to_string(k.id)};
    k.weight = weights[i];
    c.keys.push_back(k);
  }
  c.models.push_back({"m", "system", 1700000000});
  c.routes.push_back({"m", 1, "upstream-m"});
  return c;
}

std::optional<std::string> Opener(const UpstreamKeyRecord& k) {
  return "sk-key-" + std::to_string(k.id);
}

KeyPoolOptions Options() {
  KeyPoolOptions o;
  o.failure_threshold = 3;
  o.breaker_cooldown = seconds(30);
  o.trial_timeout = seconds(60);
  o.rate_limit_cooldown = seconds(10);
  o.max_attempts = 3;
  return o;
}

class RouterKeyPoolTest : public ::testing::Test {
 protected:
  void Load(const Catalogue& c) { unreadable_ = pool_.Replace(c, Opener); }

  // The key id of the first attempt.
  int64_t Pick(std::string_view model = "m") {
    auto r = pool_.Route(model);
    EXPECT_EQ(r.status, RouteResult::Status::kOk);
    return r.attempts.empty() ? 0 : r.attempts.front().key_id;
  }

  void Fail(int64_t key, int times = 1, OutcomeKind kind = OutcomeKind::kServerError) {
    for (int i = 0; i < times; ++i) EXPECT_TRUE(pool_.Report({key, kind, 0}));
  }

  BreakerState State(int64_t key) { return pool_.Health(key).value().state; }

  FakeClock clock_;
  KeyPool pool_{Options(), clock_};
  std::vector<int64_t> unreadable_;
};

TEST_F(RouterKeyPoolTest, SmoothWeightedRoundRobinHolds3To1OverEveryWindow) {
  Load(OneModel({3, 1}));
  std::vector<int64_t> picks;
  for (int i = 0; i < 400; ++i) picks.push_back(Pick());
  int heavy = static_cast<int>(std::count(picks.begin(), picks.end(), 1));
  EXPECT_NEAR(heavy, 300, 8) << "3:1 over 400 picks";
  EXPECT_EQ(std::count(picks.begin(), picks.end(), 2), 400 - heavy);
  // Smooth, not bursty: every window of 4 consecutive picks is exactly 3:1.
  for (size_t start = 0; start + 4 <= picks.size(); ++start) {
    int in_window =
        static_cast<int>(std::count(picks.begin() + start, picks.begin() + start + 4, 1));
    ASSERT_EQ(in_window, 3) << "window starting at pick " << start;
  }
}

TEST_F(RouterKeyPoolTest, WeightsAreProportionalAcrossManyKeys) {
  Load(OneModel({5, 3, 2}));
  std::map<int64_t, int> count;
  for (int i = 0; i < 1000; ++i) ++count[Pick()];
  EXPECT_EQ(count[1], 500);
  EXPECT_EQ(count[2], 300);
  EXPECT_EQ(count[3], 200);
}

TEST_F(RouterKeyPoolTest, RotationSurvivesAnUnchangedReload) {
  Load(OneModel({3, 1}));
  std::vector<int64_t> picks;
  for (int i = 0; i < 40; ++i) {
    if (i % 3 == 0) Load(OneModel({3, 1}));  // the periodic refresh
    picks.push_back(Pick());
  }
  for (size_t start = 0; start + 4 <= picks.size(); ++start)
    ASSERT_EQ(std::count(picks.begin() + start, picks.begin() + start + 4, 1), 3) << start;
}

TEST_F(RouterKeyPoolTest, PlanHasDistinctKeysUpToMaxAttempts) {
  Load(OneModel({1, 1, 1, 1, 1}));
  auto plan = pool_.Route("m");
  ASSERT_EQ(plan.status, RouteResult::Status::kOk);
  EXPECT_EQ(plan.model, "m");
  ASSERT_EQ(plan.attempts.size(), 3u) << "the configured default max_attempts";
  std::set<int64_t> ids;
  for (const auto& a : plan.attempts) {
    ids.insert(a.key_id);
    EXPECT_EQ(a.api_key, "sk-key-" + std::to_string(a.key_id));
    EXPECT_EQ(a.base_url, "https://api.example.com/v1");
    EXPECT_EQ(a.upstream_model, "upstream-m");
    EXPECT_FALSE(a.trial);
  }
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(pool_.Route("m", 5).attempts.size(), 5u);
  EXPECT_EQ(pool_.Route("m", 9).attempts.size(), 5u) << "only as many as there are keys";
  EXPECT_EQ(pool_.Route("m", 1).attempts.size(), 1u);
}

TEST_F(RouterKeyPoolTest, FallbacksFollowTheRotationWithoutSkewingIt) {
  Load(OneModel({3, 1}));
  // Requesting fallbacks must not change which key goes first: still 3:1 in every window.
  std::vector<int64_t> firsts;
  for (int i = 0; i < 100; ++i) {
    auto plan = pool_.Route("m");
    ASSERT_EQ(plan.attempts.size(), 2u);
    EXPECT_NE(plan.attempts[0].key_id, plan.attempts[1].key_id);
    firsts.push_back(plan.attempts[0].key_id);
  }
  for (size_t start = 0; start + 4 <= firsts.size(); ++start)
    ASSERT_EQ(std::count(firsts.begin() + start, firsts.begin() + start + 4, 1), 3) << start;
}

TEST_F(RouterKeyPoolTest, BreakerOpensAfterThresholdConsecutiveFailures) {
  Load(OneModel({1, 1}));
  Fail(1, 2, OutcomeKind::kConnectError);
  EXPECT_EQ(State(1), BreakerState::kClosed);
  Fail(1, 1, OutcomeKind::kTimeout);
  EXPECT_EQ(State(1), BreakerState::kOpen);
  auto h = pool_.Health(1).value();
  EXPECT_EQ(h.consecutive_failures, 3);
  EXPECT_EQ(h.failures, 3);
  EXPECT_EQ(h.requests, 3);
  EXPECT_EQ(h.breaker_remaining, seconds(30));
  for (int i = 0; i < 20; ++i) {
    auto plan = pool_.Route("m");
    ASSERT_EQ(plan.attempts.size(), 1u) << "the open key is not even a fallback";
    EXPECT_EQ(plan.attempts[0].key_id, 2);
  }
}

TEST_F(RouterKeyPoolTest, AuthErrorsTripTheBreakerButClientErrorsDoNot) {
  Load(OneModel({1, 1}));
  Fail(1, 10, OutcomeKind::kClientError);
  EXPECT_EQ(State(1), BreakerState::kClosed);
  EXPECT_EQ(pool_.Health(1)->failures, 0);
  EXPECT_EQ(pool_.Health(1)->requests, 10);
  Fail(2, 3, OutcomeKind::kAuthError);
  EXPECT_EQ(State(2), BreakerState::kOpen);
}

TEST_F(RouterKeyPoolTest, SuccessResetsTheFailureCount) {
  Load(OneModel({1, 1}));
  Fail(1, 2);
  Fail(1, 1, OutcomeKind::kSuccess);
  EXPECT_EQ(pool_.Health(1)->consecutive_failures, 0);
  Fail(1, 2);
  EXPECT_EQ(State(1), BreakerState::kClosed) << "failures were not consecutive";
  Fail(1, 1);
  EXPECT_EQ(State(1), BreakerState::kOpen);
}

TEST_F(RouterKeyPoolTest, HalfOpenAfterCooldownGivesExactlyOneTrialAndSuccessCloses) {
  Load(OneModel({1, 1}));
  Fail(1, 3);
  clock_.Advance(seconds(29));
  EXPECT_EQ(State(1), BreakerState::kOpen);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(Pick(), 2);
  clock_.Advance(seconds(1));
  EXPECT_EQ(State(1), BreakerState::kHalfOpen);

  int trials = 0;
  for (int i = 0; i < 50; ++i) {
    auto plan = pool_.Route("m");
    for (size_t j = 0; j < plan.attempts.size(); ++j) {
      if (plan.attempts[j].key_id != 1) continue;
      EXPECT_TRUE(plan.attempts[j].trial) << "a half-open key only goes out as a trial";
      EXPECT_EQ(j, 0u) << "the trial is the first attempt";
      ++trials;
    }
  }
  EXPECT_EQ(trials, 1) << "exactly one trial while it is out";
  EXPECT_TRUE(pool_.Health(1)->trial_in_flight);

  Fail(1, 1, OutcomeKind::kSuccess);
  EXPECT_EQ(State(1), BreakerState::kClosed);
  EXPECT_EQ(pool_.Health(1)->consecutive_failures, 0);
  std::map<int64_t, int> count;
  for (int i = 0; i < 10; ++i) ++count[Pick()];
  EXPECT_EQ(count[1], 5) << "back in the rotation";
  for (int i = 0; i < 10; ++i)
    for (const auto& a : pool_.Route("m").attempts) EXPECT_FALSE(a.trial);
}

TEST_F(RouterKeyPoolTest, FailedTrialReopensForAnotherCooldown) {
  Load(OneModel({1, 1}));
  Fail(1, 3);
  clock_.Advance(seconds(30));
  int64_t trial_key = 0;
  for (int i = 0; i < 4 && trial_key == 0; ++i) {
    auto plan = pool_.Route("m");
    if (plan.attempts[0].trial) trial_key = plan.attempts[0].key_id;
  }
  ASSERT_EQ(trial_key, 1);
  Fail(1, 1, OutcomeKind::kConnectError);
  EXPECT_EQ(State(1), BreakerState::kOpen) << "one failure is enough once half-open";
  EXPECT_EQ(pool_.Health(1)->breaker_remaining, seconds(30));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(Pick(), 2);
  clock_.Advance(seconds(30));
  EXPECT_EQ(State(1), BreakerState::kHalfOpen);
  bool trial_again = false;
  for (int i = 0; i < 4; ++i) trial_again |= pool_.Route("m").attempts[0].trial;
  EXPECT_TRUE(trial_again);
}

TEST_F(RouterKeyPoolTest, ALostTrialIsReplacedAfterTheTrialTimeout) {
  Load(OneModel({1}));
  Fail(1, 3);
  clock_.Advance(seconds(30));
  auto first = pool_.Route("m");
  ASSERT_EQ(first.attempts.size(), 1u);
  EXPECT_TRUE(first.attempts[0].trial);
  // The only key's trial is out: nothing else to offer.
  EXPECT_EQ(pool_.Route("m").status, RouteResult::Status::kNoHealthyUpstream);
  clock_.Advance(seconds(59));
  EXPECT_EQ(pool_.Route("m").status, RouteResult::Status::kNoHealthyUpstream);
  clock_.Advance(seconds(1));
  auto second = pool_.Route("m");
  ASSERT_EQ(second.status, RouteResult::Status::kOk) << "the edge never reported the trial";
  EXPECT_TRUE(second.attempts[0].trial);
}

TEST_F(RouterKeyPoolTest, LateFailuresDoNotExtendAnOpenBreaker) {
  Load(OneModel({1, 1}));
  Fail(1, 3);
  clock_.Advance(seconds(20));
  Fail(1, 5);  // requests routed before it opened, reported late
  EXPECT_EQ(pool_.Health(1)->breaker_remaining, seconds(10));
}

TEST_F(RouterKeyPoolTest, RateLimitMovesTrafficForRetryAfterWithoutTrippingTheBreaker) {
  Load(OneModel({3, 1}));
  ASSERT_TRUE(pool_.Report({1, OutcomeKind::kRateLimited, 5000}));
  auto h = pool_.Health(1).value();
  EXPECT_EQ(h.state, BreakerState::kClosed);
  EXPECT_EQ(h.consecutive_failures, 0);
  EXPECT_EQ(h.failures, 0);
  EXPECT_EQ(h.rate_limit_remaining, milliseconds(5000));
  for (int i = 0; i < 20; ++i) {
    auto plan = pool_.Route("m");
    ASSERT_EQ(plan.attempts.size(), 1u);
    EXPECT_EQ(plan.attempts[0].key_id, 2) << "all traffic moves to the other key";
  }
  clock_.Advance(milliseconds(5000));
  std::map<int64_t, int> count;
  for (int i = 0; i < 8; ++i) ++count[Pick()];
  EXPECT_GE(count[1], 5) << "back after retry-after";
}

TEST_F(RouterKeyPoolTest, RateLimitWithoutRetryAfterUsesTheDefaultCooldown) {
  Load(OneModel({1, 1}));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 0}));
  EXPECT_EQ(State(2), BreakerState::kClosed) << "429s never open the breaker";
  EXPECT_EQ(pool_.Health(2)->rate_limit_remaining, seconds(10));
  clock_.Advance(milliseconds(9999));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Pick(), 1);
  clock_.Advance(milliseconds(1));
  std::set<int64_t> seen;
  for (int i = 0; i < 4; ++i) seen.insert(Pick());
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
}

TEST_F(RouterKeyPoolTest, NoHealthyUpstreamWhenEveryKeyIsOut) {
  Load(OneModel({1, 1}));
  Fail(1, 3);
  ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 1000}));
  auto plan = pool_.Route("m");
  EXPECT_EQ(plan.status, RouteResult::Status::kNoHealthyUpstream);
  EXPECT_EQ(plan.model, "m");
  EXPECT_TRUE(plan.attempts.empty());
}

TEST_F(RouterKeyPoolTest, UnknownModelIsNotFound) {
  Load(OneModel({1}));
  auto plan = pool_.Route("gpt-nonexistent");
  EXPECT_EQ(plan.status, RouteResult::Status::kModelNotFound);
  EXPECT_TRUE(plan.attempts.empty());
  EXPECT_EQ(pool_.Route("M").status, RouteResult::Status::kModelNotFound) << "names are exact";
}

TEST_F(RouterKeyPoolTest, AliasesResolveToTheCanonicalModel) {
  Catalogue c = OneModel({1});
  c.aliases.push_back({"m-latest", "m"});
  c.aliases.push_back({"dangling", "no-such-model"});
  Load(c);
  auto plan = pool_.Route("m-latest");
  ASSERT_EQ(plan.status, RouteResult::Status::kOk);
  EXPECT_EQ(plan.model, "m");
  EXPECT_EQ(plan.attempts.at(0).upstream_model, "upstream-m");
  EXPECT_EQ(pool_.Route("dangling").status, RouteResult::Status::kModelNotFound);
  auto models = pool_.ListModels();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].id, "m");
  EXPECT_EQ(models[1].id, "m-latest");
  EXPECT_EQ(models[1].created, 1700000000);
}

TEST_F(RouterKeyPoolTest, ModelWithoutRoutesHasNoHealthyUpstream) {
  Catalogue c = OneModel({1});
  c.models.push_back({"lonely", "system", 1});
  Load(c);
  EXPECT_EQ(pool_.Route("lonely").status, RouteResult::Status::kNoHealthyUpstream);
}

TEST_F(RouterKeyPoolTest, DisabledKeysProvidersAndUnreadableSecretsAreSkipped) {
  Catalogue c = OneModel({1, 1, 1});
  c.keys[0].enabled = false;
  Load(c);
  for (int i = 0; i < 6; ++i) EXPECT_NE(Pick(), 1);

  unreadable_ = pool_.Replace(c, [](const UpstreamKeyRecord& k) -> std::optional<std::string> {
    if (k.id == 2) return std::nullopt;
    return "sk-key-" + std::to_string(k.id);
  });
  EXPECT_EQ(unreadable_, std::vector<int64_t>{2});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(Pick(), 3);

  c.providers[0].enabled = false;
  Load(c);
  EXPECT_EQ(pool_.Route("m").status, RouteResult::Status::kNoHealthyUpstream);
}

TEST_F(RouterKeyPoolTest, SeveralProvidersServeOneModelWithTheirOwnUpstreamNames) {
  Catalogue c = OneModel({1});
  c.providers.push_back({2, "azure", ProviderType::kAzureOpenAi, "https://x.openai.azure.com",
                         "2024-06-01", true, 100});
  UpstreamKeyRecord k;
  k.id = 7;
  k.provider_id = 2;
  k.name = "az";
  k.secret = {"ct", "n7"};
  c.keys.push_back(k);
  c.routes.push_back({"m", 2, "my-deployment"});
  Load(c);
  auto plan = pool_.Route("m");
  ASSERT_EQ(plan.attempts.size(), 2u);
  for (const auto& a : plan.attempts) {
    if (a.key_id == 7) {
      EXPECT_EQ(a.provider_type, ProviderType::kAzureOpenAi);
      EXPECT_EQ(a.upstream_model, "my-deployment");
      EXPECT_EQ(a.api_version, "2024-06-01");
      EXPECT_EQ(a.api_key, "sk-key-7");
    } else {
      EXPECT_EQ(a.upstream_model, "upstream-m");
    }
  }
}

TEST_F(RouterKeyPoolTest, HealthSurvivesReloadsAndResetsOnRotation) {
  Catalogue c = OneModel({1, 1});
  Load(c);
  Fail(1, 3);
  Load(c);
  EXPECT_EQ(State(1), BreakerState::kOpen) << "a periodic reload must not close breakers";
  c.keys[0].secret.nonce = "rotated";
  Load(c);
  EXPECT_EQ(State(1), BreakerState::kClosed) << "a new secret starts with a clean slate";
  c.keys.pop_back();
  Load(c);
  EXPECT_FALSE(pool_.Health(2).has_value());
  EXPECT_FALSE(pool_.Report({2, OutcomeKind::kServerError, 0})) << "deleted key";
}

TEST_F(RouterKeyPoolTest, ConcurrentRoutesHandOutOneTrial) {
  Load(OneModel({1, 1}));
  Fail(1, 3);
  clock_.Advance(seconds(30));
  std::atomic<int> trials{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        for (const auto& a : pool_.Route("m").attempts) trials += a.trial ? 1 : 0;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(trials.load(), 1);
}

}  // namespace
}  // namespace tollgate::router
