// The edge's gRPC client skeleton (grpc_call.h) against a real in-process gRPC server serving
// the standard health service (grpc.health.v1): an answer, an answered error, a service that is
// not there, a deadline, and the drain at shutdown. The reading of statuses (Unreachable,
// AnsweredError) is checked on its own.
#include "src/grpc_call.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "src/async.h"
#include "tollgate/errors.h"
#include "tollgate/grpc_errors.h"

namespace tollgate::edge {
namespace {

namespace hpb = grpc::health::v1;
using namespace std::chrono_literals;

// Check("") is SERVING at once; Check("hold") is answered only by Release(); any other name is
// NOT_FOUND, as the standard service answers for a service it does not know.
class HealthService final : public hpb::Health::CallbackService {
 public:
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const hpb::HealthCheckRequest* request,
                                  hpb::HealthCheckResponse* response) override {
    auto* reactor = context->DefaultReactor();
    if (request->service() == "hold") {
      std::lock_guard lock(mu_);
      held_.push_back(reactor);
      return reactor;
    }
    if (!request->service().empty()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service"));
      return reactor;
    }
    response->set_status(hpb::HealthCheckResponse::SERVING);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  size_t held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }

  // Finishes every held call (a cancelled call must still be finished).
  void Release() {
    std::lock_guard lock(mu_);
    for (auto* reactor : held_) reactor->Finish(grpc::Status::OK);
    held_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<grpc::ServerUnaryReactor*> held_;
};

class GrpcCallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
    ASSERT_GT(port, 0);
    channel_ = OpenChannel("127.0.0.1:" + std::to_string(port));
    stub_ = hpb::Health::NewStub(channel_);
  }

  void TearDown() override {
    service_.Release();
    server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  // One Check through CallUnary, waited for here (the callback thread hands it over).
  grpc::Status Check(CallTracker& tracker, const std::string& service,
                     std::chrono::milliseconds timeout = 2s,
                     hpb::HealthCheckResponse* out = nullptr) {
    return Check(*stub_, tracker, service, timeout, out);
  }
  static grpc::Status Check(hpb::Health::Stub& stub, CallTracker& tracker,
                            const std::string& service, std::chrono::milliseconds timeout,
                            hpb::HealthCheckResponse* out = nullptr) {
    hpb::HealthCheckRequest request;
    request.set_service(service);
    std::promise<grpc::Status> got;
    CallUnary<hpb::HealthCheckResponse>(
        tracker, timeout, std::move(request), [&stub](auto... a) { stub.async()->Check(a...); },
        [&](const grpc::Status& status, hpb::HealthCheckResponse& response) {
          if (out) *out = response;
          got.set_value(status);
        });
    return got.get_future().get();
  }

  HealthService service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hpb::Health::Stub> stub_;
};

TEST_F(GrpcCallTest, AnAnswerReachesTheCallerAndTheCallIsCountedOut) {
  CallTracker tracker;
  hpb::HealthCheckResponse response;
  grpc::Status status = Check(tracker, "", 2s, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), hpb::HealthCheckResponse::SERVING);
  // `done` ran before the call was counted out; the count drops right after.
  for (int i = 0; i < 200 && tracker.in_flight() != 0; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(tracker.in_flight(), 0);
}

TEST_F(GrpcCallTest, AnAnsweredErrorIsNotUnreachable) {
  CallTracker tracker;
  grpc::Status status = Check(tracker, "no.such.Service");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(Unreachable(status));
  Failure answered = AnsweredError(status);
  EXPECT_EQ(answered.code, ErrorCode::kNotFound);
  EXPECT_EQ(answered.message, "unknown service");
}

// The coroutine side: the callback thread hands the result to an Eventual, and the coroutine
// resumes on its own io_context.
TEST_F(GrpcCallTest, BridgesIntoACoroutine) {
  CallTracker tracker;
  boost::asio::io_context io;
  std::optional<hpb::HealthCheckResponse::ServingStatus> seen;
  std::thread::id resumed_on;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        Eventual<hpb::HealthCheckResponse::ServingStatus> answer(
            co_await boost::asio::this_coro::executor);
        CallUnary<hpb::HealthCheckResponse>(
            tracker, 2s, hpb::HealthCheckRequest(),
            [this](auto... a) { stub_->async()->Check(a...); },
            [set = answer.Setter()](const grpc::Status& status,
                                    hpb::HealthCheckResponse& response) {
              set(status.ok() ? response.status() : hpb::HealthCheckResponse::UNKNOWN);
            });
        seen = co_await answer.Wait();
        resumed_on = std::this_thread::get_id();
      },
      boost::asio::detached);
  io.run();
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(*seen, hpb::HealthCheckResponse::SERVING);
  EXPECT_EQ(resumed_on, std::this_thread::get_id());
  tracker.Drain();
}

TEST_F(GrpcCallTest, AServiceThatIsNotThereIsUnreachable) {
  // A port that was just bound and is now closed: nothing listens there.
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  auto gone = builder.BuildAndStart();
  ASSERT_TRUE(gone);
  gone->Shutdown();
  gone.reset();
  auto stub = hpb::Health::NewStub(OpenChannel("127.0.0.1:" + std::to_string(port)));
  CallTracker tracker;
  grpc::Status status = Check(*stub, tracker, "", 2s);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_TRUE(Unreachable(status));
}

TEST_F(GrpcCallTest, ADeadlineThatPassesIsUnreachable) {
  CallTracker tracker;
  const auto start = std::chrono::steady_clock::now();
  grpc::Status status = Check(tracker, "hold", 100ms);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Unreachable(status));
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 1500ms);
}

TEST_F(GrpcCallTest, DrainCancelsCallsInFlightAndRefusesNewOnes) {
  CallTracker tracker;
  std::promise<grpc::Status> first;
  hpb::HealthCheckRequest hold;
  hold.set_service("hold");
  CallUnary<hpb::HealthCheckResponse>(
      tracker, 30s, hold, [this](auto... a) { stub_->async()->Check(a...); },
      [&](const grpc::Status& status, hpb::HealthCheckResponse&) { first.set_value(status); });
  for (int i = 0; i < 400 && service_.held() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(service_.held(), 1u);
  EXPECT_EQ(tracker.in_flight(), 1);

  // Drain returns only once the held call's callback has run and its objects are gone.
  tracker.Drain();
  auto answered = first.get_future();
  ASSERT_EQ(answered.wait_for(0s), std::future_status::ready);
  grpc::Status status = answered.get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Unreachable(status));
  EXPECT_EQ(tracker.in_flight(), 0);

  // Afterwards: answered at once, inline, as unreachable; nothing is sent.
  std::thread::id answered_on;
  grpc::Status late;
  bool sent = false;
  CallUnary<hpb::HealthCheckResponse>(
      tracker, 2s, hpb::HealthCheckRequest(), [&](auto...) { sent = true; },
      [&](const grpc::Status& s, hpb::HealthCheckResponse&) {
        late = s;
        answered_on = std::this_thread::get_id();
      });
  EXPECT_FALSE(sent);
  EXPECT_EQ(answered_on, std::this_thread::get_id());
  EXPECT_TRUE(Unreachable(late));
  EXPECT_EQ(tracker.in_flight(), 0);
}

TEST_F(GrpcCallTest, ADeliveryStillGoesOutAfterStopAndIsNotCancelled) {
  CallTracker tracker;
  ASSERT_TRUE(tracker.Stop());
  EXPECT_FALSE(tracker.Stop()) << "idempotent";
  std::promise<grpc::Status> got;
  CallUnary<hpb::HealthCheckResponse>(
      tracker, 2s, hpb::HealthCheckRequest(), [this](auto... a) { stub_->async()->Check(a...); },
      [&](const grpc::Status& status, hpb::HealthCheckResponse&) { got.set_value(status); },
      CallTracker::Kind::kDelivery);
  tracker.Drain();  // waits for it
  auto answered = got.get_future();
  ASSERT_EQ(answered.wait_for(0s), std::future_status::ready);
  EXPECT_TRUE(answered.get().ok());
}

TEST(GrpcStatusReading, OneDefinitionOfUnreachable) {
  using grpc::StatusCode;
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::UNAVAILABLE, "connect failed")));
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::DEADLINE_EXCEEDED, "")));
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::CANCELLED, "")));
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::UNKNOWN, "")));
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::INTERNAL, "")));
  EXPECT_TRUE(Unreachable(grpc::Status(StatusCode::UNIMPLEMENTED, "")));
  EXPECT_TRUE(Unreachable(ShutDownStatus()));
  // A service that says it cannot decide now (its database is down) gave no decision either.
  EXPECT_TRUE(Unreachable(ToGrpcStatus(ErrorCode::kServiceUnavailable, "db down")));
  EXPECT_TRUE(Unreachable(ToGrpcStatus(ErrorCode::kInternal, "failed")));
  // Decisions: the router's "every key is out" travels as UNAVAILABLE but is an answer.
  EXPECT_FALSE(Unreachable(ToGrpcStatus(ErrorCode::kNoHealthyUpstream, "none")));
  EXPECT_FALSE(Unreachable(ToGrpcStatus(ErrorCode::kModelNotFound, "m")));
  EXPECT_FALSE(Unreachable(ToGrpcStatus(ErrorCode::kInsufficientQuota, "broke")));
  EXPECT_FALSE(Unreachable(grpc::Status(StatusCode::INVALID_ARGUMENT, "bad day")));
  EXPECT_FALSE(Unreachable(grpc::Status(StatusCode::PERMISSION_DENIED, "")));
  EXPECT_FALSE(Unreachable(grpc::Status(StatusCode::RESOURCE_EXHAUSTED, "")));
}

TEST(GrpcStatusReading, AnsweredErrorNamesTheServicesError) {
  Failure f = AnsweredError(ToGrpcStatus(ErrorCode::kModelNotFound, "no model m"));
  EXPECT_EQ(f.code, ErrorCode::kModelNotFound);
  EXPECT_EQ(f.message, "no model m");
  EXPECT_EQ(AnsweredError(ToGrpcStatus(ErrorCode::kInsufficientQuota, "x")).code,
            ErrorCode::kInsufficientQuota);
  EXPECT_EQ(AnsweredError(ToGrpcStatus(ErrorCode::kNoHealthyUpstream, "x")).code,
            ErrorCode::kNoHealthyUpstream);
  // Without details, the gRPC code decides.
  EXPECT_EQ(AnsweredError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad")).code,
            ErrorCode::kInvalidRequest);
  EXPECT_EQ(AnsweredError(grpc::Status(grpc::StatusCode::NOT_FOUND, "")).code,
            ErrorCode::kNotFound);
  EXPECT_EQ(AnsweredError(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "")).code,
            ErrorCode::kRateLimited);
}

}  // namespace
}  // namespace tollgate::edge
