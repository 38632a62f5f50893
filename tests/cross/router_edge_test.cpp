// The edge's routing against the real router module (router_service_fixture.h): plans made
// in the edge from the polled routing table (LocalRouterClient), the router asked only for a
// model the table does not know (GrpcRouterClient), breakers fed by the edge's own outcomes.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <map>
#include <thread>

#include "src/grpc_router_client.h"
#include "src/local_router.h"
#include "test/router_service_fixture.h"

namespace tollgate::router {
namespace {

using RouterEdgeTest = RouterGrpcTest;

TEST_F(RouterEdgeTest, AnEdgePlansLocallyFromTheRoutingTable) {
  Seed();
  struct Remote final : edge::RouterClient {
    int routes = 0;
    int reports = 0;
    void Route(std::string, int32_t, std::function<void(edge::RouteResult)> done) override {
      ++routes;
      edge::RouteResult r;
      r.failure = edge::Failure{ErrorCode::kModelNotFound, "remote"};
      done(r);
    }
    void Report(edge::AttemptOutcome) override { ++reports; }
    void ListModels(std::function<void(edge::ModelsResult)> done) override { done({}); }
  } remote;
  edge::LocalRouterOptions options;
  options.target = "127.0.0.1:" + std::to_string(process_->port());
  options.refresh = std::chrono::hours(1);  // polled by hand below
  edge::LocalRouterClient local(options, remote);
  ASSERT_TRUE(local.RefreshOnce());
  ASSERT_TRUE(local.has_table());

  std::map<int64_t, int> first;
  for (int i = 0; i < 8; ++i) {
    edge::RouteResult plan;
    local.Route(i % 2 ? "mini" : "gpt-4o-mini", 3, [&](edge::RouteResult r) { plan = r; });
    ASSERT_FALSE(plan.failure);
    EXPECT_EQ(plan.model, "gpt-4o-mini");
    ASSERT_EQ(plan.attempts.size(), 2u);
    ++first[plan.attempts[0].upstream_key_id];
    for (const auto& a : plan.attempts) {
      EXPECT_EQ(a.api_key, a.upstream_key_id == heavy_id_ ? kHeavySecret : kLightSecret);
      EXPECT_EQ(a.upstream_model, "gpt-4o-mini-2024-07-18");
    }
  }
  EXPECT_EQ(first[heavy_id_], 6);
  EXPECT_EQ(first[light_id_], 2);
  EXPECT_EQ(remote.routes, 0) << "no call to the router per request";

  edge::RouteResult unknown;
  local.Route("gpt-5-nope", 3, [&](edge::RouteResult r) { unknown = r; });
  EXPECT_EQ(remote.routes, 1) << "an unknown model is asked of the router";

  // Three failures of the heavy key open its breaker in this edge: it leaves the plans.
  for (int i = 0; i < 3; ++i)
    local.Report({heavy_id_, edge::OutcomeKind::kServerError, 500, 0, 1, kUpstreamModel});
  EXPECT_EQ(remote.reports, 3) << "outcomes still reach the router";
  edge::RouteResult plan;
  local.Route("mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure);
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].upstream_key_id, light_id_);
  // A new table keeps that health.
  ASSERT_TRUE(local.RefreshOnce());
  local.Route("mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_EQ(plan.attempts.size(), 1u);
  local.Stop();
}

// Issue #15's flaky e2e test: an operator creates a model and then routes it; an edge that polls
// between the two holds a table where the model exists and nothing serves it. Until its next poll
// it answered 503 no_healthy_upstream; the router, which reloads on every admin change, knows
// the route at once, so the edge asks it (and polls early), as for a model it does not know.
TEST_F(RouterEdgeTest, AnEdgeAsksTheRouterForAModelItsTableHasNoRouteFor) {
  Seed();
  const std::string target = "127.0.0.1:" + std::to_string(process_->port());
  edge::GrpcRouterClient remote({.target = target});
  edge::LocalRouterOptions options;
  options.target = target;
  options.refresh = std::chrono::hours(1);  // polled by hand below
  edge::LocalRouterClient local(options, remote);
  // The poller's own first poll, done before the race is staged (it must not land later).
  for (int i = 0; i < 500 && !local.has_table(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(local.has_table());
  auto route = [&](const std::string& model) {
    std::promise<edge::RouteResult> planned;
    local.Route(model, 3, [&](edge::RouteResult r) { planned.set_value(std::move(r)); });
    return planned.get_future().get();
  };

  pb::CreateModelRequest cm;
  cm.set_name("late-model");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
  ASSERT_TRUE(local.RefreshOnce());  // the edge's poll lands between the two admin calls
  pb::SetModelRouteRequest sr;
  sr.set_model("late-model");
  sr.set_provider_id(provider_id_);
  pb::SetModelRouteResponse set;
  ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &set).ok());

  edge::RouteResult plan = route("late-model");
  ASSERT_FALSE(plan.failure) << plan.failure->message;
  EXPECT_EQ(plan.model, "late-model");
  EXPECT_EQ(plan.attempts.size(), 2u);

  // With every key of a routed model out, the edge answers itself: that is no table race.
  ASSERT_TRUE(local.RefreshOnce());
  for (int64_t key : {heavy_id_, light_id_})
    for (int i = 0; i < 3; ++i)
      local.Report({key, edge::OutcomeKind::kServerError, 500, 0, 1, "late-model"});
  plan = route("late-model");
  ASSERT_TRUE(plan.failure);
  EXPECT_EQ(plan.failure->code, ErrorCode::kNoHealthyUpstream);
  local.Stop();
  remote.Shutdown();
}

// Issue #15: the edge's own breakers are per (key, model) too: a model failing on every key
// leaves the other models those keys serve alone.
TEST_F(RouterEdgeTest, AnEdgeKeepsHealthPerKeyAndModel) {
  Seed();
  pb::CreateModelRequest cm;
  cm.set_name("other");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
  pb::SetModelRouteRequest sr;
  sr.set_model("other");
  sr.set_provider_id(provider_id_);
  pb::SetModelRouteResponse set;
  ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &set).ok());
  struct Remote final : edge::RouterClient {
    void Route(std::string, int32_t, std::function<void(edge::RouteResult)> done) override {
      done({edge::Failure{ErrorCode::kInternal, "not asked in this test"}});
    }
    void Report(edge::AttemptOutcome) override {}
    void ListModels(std::function<void(edge::ModelsResult)> done) override { done({}); }
  } remote;
  edge::LocalRouterOptions options;
  options.target = "127.0.0.1:" + std::to_string(process_->port());
  options.refresh = std::chrono::hours(1);
  edge::LocalRouterClient local(options, remote);
  ASSERT_TRUE(local.RefreshOnce());

  for (int64_t key : {heavy_id_, light_id_})
    local.Report({key, edge::OutcomeKind::kRateLimited, 429, 60000, 1, kUpstreamModel});
  edge::RouteResult plan;
  local.Route("gpt-4o-mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_TRUE(plan.failure);
  EXPECT_EQ(plan.failure->code, ErrorCode::kNoHealthyUpstream);
  local.Route("other", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure) << "another model of the same keys";
  EXPECT_EQ(plan.attempts.size(), 2u);

  // 401s are the key's: it leaves every model's plans.
  for (int i = 0; i < 3; ++i)
    local.Report({heavy_id_, edge::OutcomeKind::kAuthError, 401, 0, 1, "other"});
  local.Route("other", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure);
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].upstream_key_id, light_id_);
  local.Stop();
}

}  // namespace
}  // namespace tollgate::router
