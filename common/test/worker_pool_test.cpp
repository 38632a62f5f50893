#include "tollgate/worker_pool.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <atomic>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tollgate/worker_call.h"

namespace tollgate {
namespace {

double Refused(prometheus::Registry& registry) {
  for (const auto& family : registry.Collect())
    if (family.name == "tollgate_worker_pool_refused_total")
      return family.metric.at(0).counter.value;
  return -1;
}

// Holds the pool's only thread until released.
struct Blocker {
  std::promise<void> started, release;
  std::shared_future<void> released = release.get_future().share();
  std::function<void()> Task() {
    return [this] {
      started.set_value();
      released.wait();
    };
  }
};

TEST(WorkerPoolTest, RunsEverythingPostedBeforeStop) {
  std::atomic<int> ran{0};
  WorkerPool pool(3, 100);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(pool.TryPost([&ran] { ++ran; }));
  pool.Stop();
  EXPECT_EQ(ran, 50);
  EXPECT_FALSE(pool.TryPost([&ran] { ++ran; })) << "a stopped pool refuses";
  EXPECT_EQ(ran, 50);
}

TEST(WorkerPoolTest, RefusesBeyondTheQueueBoundAndCountsIt) {
  prometheus::Registry registry;
  WorkerPool pool(1, 2, &registry, "test");
  Blocker blocker;
  ASSERT_TRUE(pool.TryPost(blocker.Task()));
  blocker.started.get_future().wait();  // the thread is busy; nothing queued
  EXPECT_EQ(pool.queued(), 0u);

  std::atomic<int> ran{0};
  EXPECT_TRUE(pool.TryPost([&ran] { ++ran; }));
  EXPECT_TRUE(pool.TryPost([&ran] { ++ran; }));
  EXPECT_EQ(pool.queued(), 2u);
  EXPECT_FALSE(pool.TryPost([&ran] { ++ran; })) << "the queue holds 2 at most";
  EXPECT_FALSE(pool.TryPost([&ran] { ++ran; }));
  EXPECT_EQ(Refused(registry), 2);

  blocker.release.set_value();
  pool.Stop();
  EXPECT_EQ(ran, 2) << "the accepted tasks ran, the refused ones never";
  EXPECT_EQ(pool.queued(), 0u);
}

// A callback service whose handler runs on the pool, the way every database service's does.
class PooledHealth final : public grpc::health::v1::Health::CallbackService {
 public:
  explicit PooledHealth(WorkerPool& workers) : workers_(workers) {}
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest*,
                                  grpc::health::v1::HealthCheckResponse* response) override {
    auto* reactor = context->DefaultReactor();
    PostOrRefuse(workers_, reactor, "test", [reactor, response] {
      response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

 private:
  WorkerPool& workers_;
};

TEST(WorkerPoolTest, ARefusedCallIsAnsweredUnavailable) {
  WorkerPool pool(1, 1);
  PooledHealth service(pool);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_NE(port, 0);
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  auto check = [&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckResponse resp;
    return stub->Check(&ctx, grpc::health::v1::HealthCheckRequest{}, &resp);
  };
  ASSERT_TRUE(check().ok());

  Blocker blocker;
  ASSERT_TRUE(pool.TryPost(blocker.Task()));
  blocker.started.get_future().wait();
  ASSERT_TRUE(pool.TryPost([] {}));  // the queue is full now
  auto refused = check();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(refused.error_message().find("test service is overloaded"), std::string::npos)
      << refused.error_message();

  blocker.release.set_value();
  for (int i = 0; i < 1000 && pool.queued() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(check().ok()) << "served again once the queue drained";
  server->Shutdown();
  pool.Stop();
}

}  // namespace
}  // namespace tollgate
