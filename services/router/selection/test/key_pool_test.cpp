// The key pool: smooth weighted round-robin, breakers and 429 cooldowns per
// (key, upstream model) and key-wide, aliases, all on a fake clock (no sleeps).
#include "tollgate/router/key_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "test/fake_clock.h"

namespace tollgate::router {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::FakeClock;

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

// Two public models "a" and "b" (upstream "upstream-a", "upstream-b") on the same keys.
Catalogue TwoModels(const std::vector<int32_t>& weights = {1, 1}) {
  Catalogue c = OneModel(weights);
  c.models = {{"a", "system", 1}, {"b", "system", 1}};
  c.routes = {{"a", 1, "upstream-a"}, {"b", 1, "upstream-b"}};
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

  // Outcomes of attempts that asked the upstream for `upstream_model`.
  void Fail(int64_t key, int times = 1, OutcomeKind kind = OutcomeKind::kServerError,
            const std::string& upstream_model = "upstream-m") {
    for (int i = 0; i < times; ++i) EXPECT_TRUE(pool_.Report({key, kind, 0, upstream_model}));
  }

  // The (key, upstream model) pair's health.
  ModelHealth Model(int64_t key, const std::string& upstream_model = "upstream-m") {
    KeyHealth health = pool_.Health(key).value();
    for (auto& m : health.models)
      if (m.upstream_model == upstream_model) return m;
    ADD_FAILURE() << "no health for key " << key << " model " << upstream_model;
    return {};
  }
  BreakerState State(int64_t key, const std::string& upstream_model = "upstream-m") {
    return Model(key, upstream_model).state;
  }
  // The key-wide breaker.
  BreakerState KeyWide(int64_t key) { return pool_.Health(key).value().state; }

  // How often each key goes first over `n` plans for `model`.
  std::map<int64_t, int> Firsts(std::string_view model, int n) {
    std::map<int64_t, int> count;
    for (int i = 0; i < n; ++i) ++count[Pick(model)];
    return count;
  }

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
  Fail(1, 2, OutcomeKind::kTimeout);
  EXPECT_EQ(State(1), BreakerState::kClosed);
  Fail(1, 1, OutcomeKind::kServerError);
  EXPECT_EQ(State(1), BreakerState::kOpen);
  auto h = Model(1);
  EXPECT_EQ(h.consecutive_failures, 3);
  EXPECT_EQ(h.failures, 3);
  EXPECT_EQ(h.requests, 3);
  EXPECT_EQ(h.breaker_remaining, seconds(30));
  auto key = pool_.Health(1).value();
  EXPECT_EQ(key.state, BreakerState::kClosed) << "timeouts and 5xx are the model's";
  EXPECT_EQ(key.consecutive_failures, 0);
  EXPECT_EQ(key.requests, 3) << "the key's totals count every model";
  EXPECT_EQ(key.failures, 3);
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
  EXPECT_EQ(KeyWide(1), BreakerState::kClosed);
  EXPECT_EQ(pool_.Health(1)->failures, 0);
  EXPECT_EQ(pool_.Health(1)->requests, 10);
  Fail(2, 3, OutcomeKind::kAuthError);
  EXPECT_EQ(KeyWide(2), BreakerState::kOpen);
  EXPECT_EQ(State(2), BreakerState::kClosed) << "an auth error is the key's, not the model's";
}

TEST_F(RouterKeyPoolTest, SuccessResetsTheFailureCount) {
  Load(OneModel({1, 1}));
  Fail(1, 2);
  Fail(1, 1, OutcomeKind::kSuccess);
  EXPECT_EQ(Model(1).consecutive_failures, 0);
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
  EXPECT_TRUE(Model(1).trial_in_flight);
  EXPECT_FALSE(pool_.Health(1)->trial_in_flight) << "the key-wide breaker is closed";

  Fail(1, 1, OutcomeKind::kSuccess);
  EXPECT_EQ(State(1), BreakerState::kClosed);
  EXPECT_EQ(Model(1).consecutive_failures, 0);
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
  Fail(1, 1, OutcomeKind::kTimeout);
  EXPECT_EQ(State(1), BreakerState::kOpen) << "one failure is enough once half-open";
  EXPECT_EQ(Model(1).breaker_remaining, seconds(30));
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
  EXPECT_EQ(Model(1).breaker_remaining, seconds(10));
}

TEST_F(RouterKeyPoolTest, RateLimitMovesTrafficForRetryAfterWithoutTrippingTheBreaker) {
  Load(OneModel({3, 1}));
  ASSERT_TRUE(pool_.Report({1, OutcomeKind::kRateLimited, 5000, "upstream-m"}));
  auto h = Model(1);
  EXPECT_EQ(h.state, BreakerState::kClosed);
  EXPECT_EQ(h.consecutive_failures, 0);
  EXPECT_EQ(h.failures, 0);
  EXPECT_EQ(h.rate_limit_remaining, milliseconds(5000));
  EXPECT_EQ(pool_.Health(1)->rate_limit_remaining, milliseconds(0)) << "not key-wide";
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
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 0, "upstream-m"}));
  EXPECT_EQ(State(2), BreakerState::kClosed) << "429s never open the breaker";
  EXPECT_EQ(Model(2).rate_limit_remaining, seconds(10));
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
  ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 1000, "upstream-m"}));
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

// "No route" is not "no healthy key": an edge asks the router about the first (its table may
// predate the route), and answers the second itself.
TEST_F(RouterKeyPoolTest, ModelWithoutRoutesHasNoRoute) {
  Catalogue c = OneModel({1});
  c.models.push_back({"lonely", "system", 1});
  Load(c);
  auto plan = pool_.Route("lonely");
  EXPECT_EQ(plan.status, RouteResult::Status::kNoRoute);
  EXPECT_EQ(plan.model, "lonely");
  EXPECT_TRUE(plan.attempts.empty());
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
  EXPECT_EQ(pool_.Route("m").status, RouteResult::Status::kNoRoute) << "no usable key at all";
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
  Fail(1, 3, OutcomeKind::kConnectError);
  Load(c);
  EXPECT_EQ(State(1), BreakerState::kOpen) << "a periodic reload must not close breakers";
  EXPECT_EQ(KeyWide(1), BreakerState::kOpen);
  c.keys[0].secret.nonce = "rotated";
  Load(c);
  EXPECT_EQ(State(1), BreakerState::kClosed) << "a new secret starts with a clean slate";
  EXPECT_EQ(KeyWide(1), BreakerState::kClosed);
  c.keys.pop_back();
  Load(c);
  EXPECT_FALSE(pool_.Health(2).has_value());
  EXPECT_FALSE(pool_.Report({2, OutcomeKind::kServerError, 0, "upstream-m"})) << "deleted key";
}

// Issue #15: a 429 for one model must not take the key away from the others.
TEST_F(RouterKeyPoolTest, RateLimitOnOneModelLeavesTheKeyToOtherModels) {
  Load(TwoModels());
  ASSERT_TRUE(pool_.Report({1, OutcomeKind::kRateLimited, 2000, "upstream-a"}));
  ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 2000, "upstream-a"}));
  EXPECT_EQ(pool_.Route("a").status, RouteResult::Status::kNoHealthyUpstream);
  auto plan = pool_.Route("b");
  ASSERT_EQ(plan.status, RouteResult::Status::kOk) << "model b answered 503 before the fix";
  EXPECT_EQ(plan.attempts.size(), 2u) << "both keys still serve b";
  EXPECT_EQ(Firsts("b", 10), (std::map<int64_t, int>{{1, 5}, {2, 5}}));
  EXPECT_EQ(Model(1, "upstream-a").rate_limit_remaining, milliseconds(2000));
  EXPECT_EQ(Model(1, "upstream-b").rate_limit_remaining, milliseconds(0));
  EXPECT_EQ(pool_.Health(1)->rate_limit_remaining, milliseconds(0));
  clock_.Advance(milliseconds(2000));
  EXPECT_EQ(pool_.Route("a").status, RouteResult::Status::kOk) << "a is back after retry-after";
}

TEST_F(RouterKeyPoolTest, ServerErrorsOnOneModelOpenThatModelOnly) {
  Load(TwoModels());
  Fail(1, 3, OutcomeKind::kServerError, "upstream-a");
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kOpen);
  EXPECT_EQ(State(1, "upstream-b"), BreakerState::kClosed);
  EXPECT_EQ(KeyWide(1), BreakerState::kClosed);
  for (int i = 0; i < 6; ++i) {
    auto plan = pool_.Route("a");
    ASSERT_EQ(plan.attempts.size(), 1u);
    EXPECT_EQ(plan.attempts[0].key_id, 2);
  }
  EXPECT_EQ(Firsts("b", 10), (std::map<int64_t, int>{{1, 5}, {2, 5}}))
      << "key 1 keeps its share of b";
  // A timeout run is the model's too.
  Fail(2, 3, OutcomeKind::kTimeout, "upstream-b");
  EXPECT_EQ(State(2, "upstream-b"), BreakerState::kOpen);
  EXPECT_EQ(State(2, "upstream-a"), BreakerState::kClosed);
  EXPECT_EQ(KeyWide(2), BreakerState::kClosed);
}

TEST_F(RouterKeyPoolTest, AuthErrorsOnOneModelTakeTheKeyFromEveryModel) {
  Load(TwoModels());
  Fail(1, 3, OutcomeKind::kAuthError, "upstream-a");
  EXPECT_EQ(KeyWide(1), BreakerState::kOpen);
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kClosed);
  for (std::string_view model : {"a", "b"}) {
    auto plan = pool_.Route(model);
    ASSERT_EQ(plan.attempts.size(), 1u) << model;
    EXPECT_EQ(plan.attempts[0].key_id, 2) << model;
  }
}

TEST_F(RouterKeyPoolTest, ConnectErrorsAreKeyWide) {
  Load(TwoModels());
  Fail(1, 2, OutcomeKind::kConnectError, "upstream-a");
  Fail(1, 1, OutcomeKind::kConnectError, "upstream-b");
  EXPECT_EQ(KeyWide(1), BreakerState::kOpen) << "consecutive across models";
  EXPECT_EQ(pool_.Health(1)->consecutive_failures, 3);
  EXPECT_EQ(Model(1, "upstream-a").consecutive_failures, 0);
  EXPECT_EQ(Firsts("b", 4), (std::map<int64_t, int>{{2, 4}}));
  EXPECT_EQ(Firsts("a", 4), (std::map<int64_t, int>{{2, 4}}));
}

TEST_F(RouterKeyPoolTest, AModelTrialIsThatModelsAlone) {
  Load(TwoModels());
  Fail(1, 3, OutcomeKind::kServerError, "upstream-a");
  Fail(1, 3, OutcomeKind::kServerError, "upstream-b");
  clock_.Advance(seconds(30));
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kHalfOpen);
  EXPECT_EQ(State(1, "upstream-b"), BreakerState::kHalfOpen);
  // Each half-open pair gets its own single trial.
  std::map<std::string, int> trials;
  for (int i = 0; i < 20; ++i)
    for (std::string_view model : {"a", "b"})
      for (const auto& a : pool_.Route(model).attempts)
        if (a.key_id == 1) {
          EXPECT_TRUE(a.trial);
          ++trials[a.upstream_model];
        }
  EXPECT_EQ(trials, (std::map<std::string, int>{{"upstream-a", 1}, {"upstream-b", 1}}));
  EXPECT_TRUE(Model(1, "upstream-a").trial_in_flight);
  EXPECT_FALSE(pool_.Health(1)->trial_in_flight);
  // a's trial succeeds: a is back, b still waits for its own trial's outcome.
  Fail(1, 1, OutcomeKind::kSuccess, "upstream-a");
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kClosed);
  EXPECT_EQ(State(1, "upstream-b"), BreakerState::kHalfOpen);
  EXPECT_EQ(Firsts("a", 4)[1], 2);
  EXPECT_EQ(Firsts("b", 4)[1], 0);
  // b's trial fails: b reopens, a is untouched.
  Fail(1, 1, OutcomeKind::kServerError, "upstream-b");
  EXPECT_EQ(State(1, "upstream-b"), BreakerState::kOpen);
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kClosed);
}

TEST_F(RouterKeyPoolTest, AKeyWideTrialIsSharedByEveryModel) {
  Load(TwoModels());
  Fail(1, 3, OutcomeKind::kConnectError, "upstream-a");
  clock_.Advance(seconds(30));
  EXPECT_EQ(KeyWide(1), BreakerState::kHalfOpen);
  int trials = 0;
  for (int i = 0; i < 20; ++i)
    for (std::string_view model : {"a", "b"})
      for (const auto& a : pool_.Route(model).attempts)
        if (a.key_id == 1) {
          EXPECT_TRUE(a.trial);
          ++trials;
        }
  EXPECT_EQ(trials, 1) << "one trial for the key, whichever model carries it";
  // A 5xx says nothing about the key's credential: the trial is freed, the key stays half-open.
  Fail(1, 1, OutcomeKind::kServerError, "upstream-a");
  EXPECT_EQ(KeyWide(1), BreakerState::kHalfOpen);
  auto plan = pool_.Route("b");
  if (plan.attempts[0].key_id != 1) plan = pool_.Route("b");
  ASSERT_EQ(plan.attempts[0].key_id, 1);
  EXPECT_TRUE(plan.attempts[0].trial) << "a new trial after an undecided one";
  Fail(1, 1, OutcomeKind::kSuccess, "upstream-b");
  EXPECT_EQ(KeyWide(1), BreakerState::kClosed);
  EXPECT_EQ(Firsts("a", 4)[1], 2);
}

TEST_F(RouterKeyPoolTest, AConnectErrorDuringAModelTrialFreesIt) {
  Load(TwoModels());
  Fail(1, 3, OutcomeKind::kServerError, "upstream-a");
  clock_.Advance(seconds(30));
  auto plan = pool_.Route("a");
  if (plan.attempts[0].key_id != 1) plan = pool_.Route("a");
  ASSERT_TRUE(plan.attempts[0].trial);
  Fail(1, 1, OutcomeKind::kConnectError, "upstream-a");
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kHalfOpen) << "nothing learnt about a";
  EXPECT_FALSE(Model(1, "upstream-a").trial_in_flight);
  EXPECT_EQ(pool_.Health(1)->consecutive_failures, 1) << "the key learnt something";
}

TEST_F(RouterKeyPoolTest, AnOutcomeWithoutAModelIsKeyWide) {
  Load(TwoModels());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pool_.Report({1, OutcomeKind::kServerError, 0}));
  EXPECT_EQ(KeyWide(1), BreakerState::kOpen) << "an older edge: as before per-model health";
  ASSERT_TRUE(pool_.Report({2, OutcomeKind::kRateLimited, 1000}));
  EXPECT_EQ(pool_.Health(2)->rate_limit_remaining, milliseconds(1000));
  EXPECT_EQ(pool_.Route("b").status, RouteResult::Status::kNoHealthyUpstream);
}

TEST_F(RouterKeyPoolTest, ModelHealthIsBoundedByTheCatalogue) {
  Catalogue c = TwoModels();
  c.models.push_back({"a-too", "system", 1});
  c.routes.push_back({"a-too", 1, "upstream-a"});  // two public names, one upstream model
  Load(c);
  Fail(1, 3, OutcomeKind::kServerError, "upstream-a");
  EXPECT_EQ(pool_.Route("a-too").attempts.size(), 1u) << "the same upstream model, the same state";
  // Outcomes for models the key does not serve keep no state (the key still learns).
  EXPECT_TRUE(pool_.Report({1, OutcomeKind::kServerError, 0, "never-routed"}));
  ASSERT_EQ(pool_.Health(1)->models.size(), 2u);
  EXPECT_EQ(pool_.Health(1)->models[0].upstream_model, "upstream-a");
  EXPECT_EQ(pool_.Health(1)->models[1].upstream_model, "upstream-b");
  // Reloads keep the state of routes that stay and drop the others'.
  Load(c);
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kOpen);
  c.routes = {{"b", 1, "upstream-b"}};
  c.models = {{"b", "system", 1}};
  Load(c);
  ASSERT_EQ(pool_.Health(1)->models.size(), 1u);
  EXPECT_EQ(pool_.Health(1)->models[0].upstream_model, "upstream-b");
  c = TwoModels();
  Load(c);
  EXPECT_EQ(State(1, "upstream-a"), BreakerState::kClosed) << "a route back starts afresh";
  EXPECT_EQ(Model(1, "upstream-a").requests, 0);
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

namespace tollgate::router {
namespace {

// A response's follow-up calls go to the key that created it, whatever its health.
TEST(RouterKeyPoolKeyAttempt, NamedKeyWhateverItsHealthAndNothingElse) {
  FakeClock clock;
  KeyPool pool(Options(), clock);
  Catalogue c = OneModel({1, 1});
  c.aliases.push_back({"alias-m", "m"});
  pool.Replace(c, Opener);
  for (int i = 0; i < 3; ++i) pool.Report({2, OutcomeKind::kConnectError, 0, "upstream-m"});
  ASSERT_EQ(pool.Route("m").attempts.size(), 1u);  // key 2 is out of rotation

  RouteResult r = pool.KeyAttempt("alias-m", 2);
  ASSERT_EQ(r.status, RouteResult::Status::kOk);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.attempts.size(), 1u);
  EXPECT_EQ(r.attempts[0].key_id, 2);
  EXPECT_EQ(r.attempts[0].api_key, "sk-key-2");
  EXPECT_EQ(r.attempts[0].upstream_model, "upstream-m");
  EXPECT_EQ(r.attempts[0].base_url, "https://api.example.com/v1");

  EXPECT_EQ(pool.KeyAttempt("m", 9).status, RouteResult::Status::kNoRoute);
  EXPECT_EQ(pool.KeyAttempt("nope", 1).status, RouteResult::Status::kModelNotFound);
  c.keys[0].enabled = false;
  pool.Replace(c, Opener);
  EXPECT_EQ(pool.KeyAttempt("m", 1).status, RouteResult::Status::kNoRoute);
  EXPECT_TRUE(pool.KeyAttempt("m", 2).attempts.size() == 1);
}

}  // namespace
}  // namespace tollgate::router
