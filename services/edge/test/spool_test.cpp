// The edge's usage record spool (spool.h) and GrpcBillingClient's delivery through it, against an
// in-process fake BillingService: append, ack, replay after a restart, the bound, a torn tail,
// delivery only after an acknowledgement, redelivery after a failure and after a restart.
#include "src/spool.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "src/grpc_billing_client.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"

namespace tollgate::edge {
namespace {

namespace fs = std::filesystem;
namespace pb = tollgate::billing::v1;

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("tollgate-spool-test-" + std::to_string(rd()));
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  size_t Segments() const {
    size_t n = 0;
    if (!fs::exists(path_)) return 0;
    for (const auto& e : fs::directory_iterator(path_))
      if (e.path().extension() == ".seg") ++n;
    return n;
  }

 private:
  fs::path path_;
};

std::vector<std::string> Payloads(int from, int n) {
  std::vector<std::string> out;
  for (int i = from; i < from + n; ++i) out.push_back("record-" + std::to_string(i));
  return out;
}

TEST(Spool, AppendFrontAckInOrder) {
  TempDir dir;
  Spool spool({dir.str()});
  auto r = spool.Append(Payloads(0, 5));
  EXPECT_EQ(r.appended, 5u);
  EXPECT_EQ(r.rejected, 0u);
  EXPECT_EQ(spool.records(), 5u);
  EXPECT_EQ(spool.Front(3), Payloads(0, 3));
  spool.Ack(2);
  EXPECT_EQ(spool.Front(10), Payloads(2, 3));
  spool.Ack(3);
  EXPECT_EQ(spool.records(), 0u);
  EXPECT_EQ(spool.bytes(), 0u);
  EXPECT_EQ(dir.Segments(), 0u) << "a delivered segment is deleted";
  spool.Append(Payloads(5, 1));
  EXPECT_EQ(spool.Front(10), Payloads(5, 1));
}

TEST(Spool, ReplaysWhatWasNotAcknowledgedAfterARestart) {
  TempDir dir;
  {
    Spool spool({dir.str(), 1 << 20, /*segment_bytes=*/64});  // several segments
    spool.Append(Payloads(0, 10));
    spool.Append(Payloads(10, 10));
    spool.Ack(12);
  }
  Spool again({dir.str(), 1 << 20, 64});
  auto front = again.Front(100);
  // Whole delivered segments are gone; a partly delivered one comes back whole (redelivery is
  // harmless: billing is idempotent on the request id). Never anything lost.
  ASSERT_GE(front.size(), 8u);
  EXPECT_LE(front.size(), 12u);
  auto want = Payloads(20 - static_cast<int>(front.size()), static_cast<int>(front.size()));
  EXPECT_EQ(front, want);
  again.Append(Payloads(20, 1));
  EXPECT_EQ(again.Front(100).back(), "record-20");
}

TEST(Spool, WrittenOnlyRecordsAreReplayedAndSyncedAcrossSegments) {
  TempDir dir;
  {
    Spool spool({dir.str(), 1 << 20, /*segment_bytes=*/64});  // a new segment every few records
    for (int i = 0; i < 10; ++i) {
      auto r = spool.Append(Payloads(i, 1), Spool::Durability::kWritten);
      EXPECT_EQ(r.appended, 1u);
    }
    EXPECT_EQ(spool.records(), 10u);
    EXPECT_TRUE(spool.Sync());
    EXPECT_TRUE(spool.Sync()) << "nothing new: a no-op";
    spool.Append(Payloads(10, 2), Spool::Durability::kWritten);
    // Gone without a Sync, as a killed process: what was written is in the files.
  }
  Spool again({dir.str(), 1 << 20, 64});
  EXPECT_EQ(again.Front(100), Payloads(0, 12));
}

TEST(Spool, BoundRejectsWhatDoesNotFitUntilAcknowledged) {
  TempDir dir;
  Spool spool({dir.str(), /*max_bytes=*/200});
  std::string big(40, 'x');  // 48 bytes framed
  auto r = spool.Append({big, big, big, big, big});
  EXPECT_EQ(r.appended, 4u);
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_TRUE(spool.full());
  EXPECT_EQ(spool.Append({big}).rejected, 1u);
  spool.Ack(4);
  EXPECT_FALSE(spool.full());
  EXPECT_EQ(spool.Append({big}).appended, 1u);
}

// AppendOne (the per-request append: the payload taken over, header and payload in one
// writev) frames exactly as Append does: both replay as one sequence, and the bound holds.
TEST(Spool, SingleAppendsFrameAsBatchesDoAndKeepTheBound) {
  TempDir dir;
  {
    Spool spool({dir.str(), 1 << 20, /*segment_bytes=*/64});
    for (int i = 0; i < 6; ++i) {
      auto r = spool.AppendOne("record-" + std::to_string(i), Spool::Durability::kWritten);
      EXPECT_EQ(r.appended, 1u);
      EXPECT_EQ(r.rejected, 0u);
    }
    spool.Append(Payloads(6, 2), Spool::Durability::kWritten);
    EXPECT_EQ(spool.AppendOne("", Spool::Durability::kWritten).appended, 1u);  // empty is a record
    spool.AppendOne("record-9");
    EXPECT_EQ(spool.records(), 10u);
  }
  Spool again({dir.str(), 1 << 20, 64});
  auto want = Payloads(0, 8);
  want.push_back("");
  want.push_back("record-9");
  EXPECT_EQ(again.Front(100), want);

  TempDir small;
  Spool bounded({small.str(), /*max_bytes=*/100});
  std::string big(40, 'x');  // 48 bytes framed
  EXPECT_EQ(bounded.AppendOne(big).appended, 1u);
  EXPECT_EQ(bounded.AppendOne(big).appended, 1u);
  EXPECT_FALSE(bounded.full());
  EXPECT_EQ(bounded.AppendOne(big).rejected, 1u);
  EXPECT_TRUE(bounded.full());
  bounded.Ack(2);
  EXPECT_FALSE(bounded.full());
  EXPECT_EQ(bounded.AppendOne(big).appended, 1u);
  EXPECT_EQ(bounded.records(), 1u);
}

TEST(Spool, ATornTailIsCutOffAtReplay) {
  TempDir dir;
  std::string segment;
  {
    Spool spool({dir.str()});
    spool.Append(Payloads(0, 3));
  }
  for (const auto& e : fs::directory_iterator(dir.str()))
    if (e.path().extension() == ".seg") segment = e.path().string();
  ASSERT_FALSE(segment.empty());
  auto size = fs::file_size(segment);
  {
    // A crash in the middle of the next batch's write: a header and half a payload.
    int fd = ::open(segment.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    const char torn[] = "\x20\x00\x00\x00\x01\x02\x03\x04half";
    ASSERT_EQ(::write(fd, torn, sizeof torn - 1), static_cast<ssize_t>(sizeof torn - 1));
    ::close(fd);
  }
  Spool again({dir.str()});
  EXPECT_EQ(again.Front(10), Payloads(0, 3));
  EXPECT_EQ(fs::file_size(segment), size) << "truncated back to the last whole record";
}

TEST(Spool, ReadsSegmentsWrittenBeforeTheChecksumMovedToBoost) {
  // Frames exactly as the earlier hand-written CRC-32 wrote them ([len][crc32][payload], little
  // endian; the CRCs are zlib.crc32's), so spools left by an older edge still replay.
  TempDir dir;
  fs::create_directories(dir.str());
  const std::string frames = std::string("\x08\x00\x00\x00\x06\xd6\xc0\x4f", 8) + "record-0" +
                             std::string("\x09\x00\x00\x00\x26\x39\xf4\xcb", 8) + "123456789";
  {
    int fd = ::open((dir.str() + "/spool-00000000000000000001.seg").c_str(),
                    O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, frames.data(), frames.size()), static_cast<ssize_t>(frames.size()));
    ::close(fd);
  }
  Spool spool({dir.str()});
  EXPECT_EQ(spool.Front(10), (std::vector<std::string>{"record-0", "123456789"}));
}

TEST(Spool, ASecondProcessOnTheSameDirectoryGetsItsOwn) {
  TempDir dir;
  Spool first({dir.str()});
  first.Append(Payloads(0, 2));
  // flock locks are per open file description, so a second Spool in this process sees the lock.
  Spool second({dir.str()});
  EXPECT_NE(second.dir(), first.dir());
  EXPECT_EQ(second.records(), 0u);
  fs::remove_all(second.dir());
}

// A BillingService that stores records by request id and can be told to fail RecordUsage.
class FakeBilling final : public pb::BillingService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Hold(grpc::CallbackServerContext* context,
                                 const pb::HoldRequest* request,
                                 pb::HoldResponse* response) override {
    auto* reactor = context->DefaultReactor();
    if (request->model() == "too-expensive") {
      reactor->Finish(
          grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "You exceeded your quota"));
    } else {
      response->set_hold_id(42);
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }
  grpc::ServerUnaryReactor* RecordUsage(grpc::CallbackServerContext* context,
                                        const pb::RecordUsageRequest* request,
                                        pb::RecordUsageResponse* response) override {
    auto* reactor = context->DefaultReactor();
    ++calls;
    if (fail) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"));
      return reactor;
    }
    std::lock_guard lock(mu);
    for (const auto& r : request->records()) {
      ++deliveries;
      stored.insert(r.request_id());
      cached_tokens += r.cached_tokens();
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  size_t Stored() {
    std::lock_guard lock(mu);
    return stored.size();
  }
  int64_t CachedTokens() {
    std::lock_guard lock(mu);
    return cached_tokens;
  }
  std::atomic<bool> fail{false};
  std::atomic<int> calls{0};
  std::mutex mu;
  std::set<std::string> stored;
  int64_t cached_tokens = 0;
  int deliveries = 0;
};

class BillingClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_);
  }
  void TearDown() override { server_->Shutdown(); }

  std::unique_ptr<GrpcBillingClient> Client(std::string target = {}) {
    GrpcBillingClientOptions o;
    o.target = target.empty() ? "127.0.0.1:" + std::to_string(port_) : target;
    o.spool_dir = dir_.str();
    o.flush_interval = std::chrono::milliseconds(10);
    o.retry_pause = std::chrono::milliseconds(50);
    o.timeout = std::chrono::milliseconds(1000);
    return std::make_unique<GrpcBillingClient>(o);
  }

  static UsageRecord Rec(int i) {
    UsageRecord r;
    r.request_id = "client-id";
    r.billing_id = "req_" + std::to_string(i);
    r.principal.user_id = "7";
    r.principal.api_key_id = "9";
    r.model = "gpt-4o-mini";
    r.prompt_tokens = 10;
    r.completion_tokens = i;
    r.cached_tokens = 4;  // billing prices this part of the prompt at the cached-input price
    return r;
  }

  template <typename F>
  static bool Eventually(F f, std::chrono::milliseconds limit = std::chrono::milliseconds(5000)) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (f()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return f();
  }

  FakeBilling fake_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  TempDir dir_;
};

TEST_F(BillingClientTest, RecordsAreDeliveredOnceAcknowledgedAndLeaveTheSpool) {
  auto client = Client();
  for (int i = 0; i < 1200; ++i) client->Record(Rec(i));
  ASSERT_TRUE(Eventually([&] { return fake_.Stored() == 1200; }));
  ASSERT_TRUE(Eventually([&] { return client->spooled() == 0; }));
  EXPECT_EQ(client->delivered(), 1200);
  EXPECT_EQ(fake_.CachedTokens(), 1200 * 4) << "the cached part of each prompt travels";
  EXPECT_EQ(dir_.Segments(), 0u);
  EXPECT_EQ(fake_.stored.count("client-id"), 0u) << "billing gets the edge's own id";
}

TEST_F(BillingClientTest, BillingDownKeepsRecordsSpooledAndRedeliversWhenBack) {
  fake_.fail = true;
  auto client = Client();
  for (int i = 0; i < 50; ++i) client->Record(Rec(i));
  ASSERT_TRUE(Eventually([&] { return fake_.calls >= 2; }));
  EXPECT_EQ(client->spooled(), 50u);
  EXPECT_EQ(fake_.Stored(), 0u);
  fake_.fail = false;
  ASSERT_TRUE(Eventually([&] { return fake_.Stored() == 50; }));
  ASSERT_TRUE(Eventually([&] { return client->spooled() == 0; }));
}

TEST_F(BillingClientTest, AnEdgeRestartReplaysTheSpool) {
  fake_.fail = true;
  {
    auto client = Client();
    for (int i = 0; i < 30; ++i) client->Record(Rec(i));
    ASSERT_TRUE(Eventually([&] { return client->spooled() == 30; }));
    client->Shutdown();
  }
  EXPECT_GT(dir_.Segments(), 0u);
  fake_.fail = false;
  auto client = Client();
  EXPECT_EQ(client->spooled(), 30u);
  ASSERT_TRUE(Eventually([&] { return fake_.Stored() == 30; }));
  ASSERT_TRUE(Eventually([&] { return client->spooled() == 0; }));
}

TEST_F(BillingClientTest, ARecordIsInTheSpoolWhenRecordReturnsAndSurvivesACrash) {
  fake_.fail = true;
  {
    auto client = Client();
    for (int i = 0; i < 5; ++i) client->Record(Rec(i));
    EXPECT_EQ(client->spooled(), 5u) << "written on the caller's thread, not queued in memory";
    client->SimulateCrashForTest();  // no flush, no fsync, no last delivery
  }
  fake_.fail = false;
  auto client = Client();
  EXPECT_EQ(client->spooled(), 5u);
  ASSERT_TRUE(Eventually([&] { return fake_.Stored() == 5; }));
}

TEST_F(BillingClientTest, HoldsGrantedRefusedAndFailClosed) {
  auto hold = [](GrpcBillingClient& c, std::string model) {
    std::promise<HoldResult> p;
    HoldRequest h;
    h.request_id = "req_h";
    h.principal.user_id = "7";
    h.model = std::move(model);
    c.Hold(h, [&p](HoldResult r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  };
  auto client = Client();
  auto ok = hold(*client, "gpt-4o-mini");
  EXPECT_FALSE(ok.failure);
  EXPECT_EQ(ok.hold_id, "42");
  auto refused = hold(*client, "too-expensive");
  ASSERT_TRUE(refused.failure);
  EXPECT_EQ(refused.failure->code, ErrorCode::kInsufficientQuota);
  client->Shutdown();
  client.reset();

  auto down = Client("127.0.0.1:1");  // nobody listens
  auto failed = hold(*down, "gpt-4o-mini");
  ASSERT_TRUE(failed.failure);
  EXPECT_EQ(failed.failure->code, ErrorCode::kServiceUnavailable);
}

}  // namespace
}  // namespace tollgate::edge
