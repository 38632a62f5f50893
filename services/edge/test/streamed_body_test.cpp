// Streamed request bodies (BodyStream in http.h): the real HttpServer with a handler whose routes
// stream their body, driven over raw sockets (Content-Length and chunked framing, limits, a
// refusal before any body byte, a client that stops mid-upload), and the upstream client sending
// such a body on to a second server (Content-Length kept, chunked when unknown).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "src/http_server.h"
#include "src/upstream_client.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr uint64_t kMaxBody = 64 * 1024;
constexpr uint64_t kMaxUpload = 8 * 1024 * 1024;

// What the handlers saw, for the tests to check.
struct Seen {
  std::mutex mu;
  int calls = 0;
  int refused = 0;            // requests answered without reading the body
  uint64_t refused_read = 0;  // body bytes read by those (must stay 0)
  std::optional<BodyStream::Failure> failure;
  HttpHeaders upstream_headers;  // the last /count request's head
};

// Built outside the coroutines: g++ 12 rejects braced initialisers of literals inside one.
HttpHeaders JsonHead() { return {{"content-type", "application/json"}}; }
std::string ForwardAnswer(UpstreamStatus st, const std::string& body) {
  Json answer = {{"status", UpstreamStatusName(st)},
                 {"upstream", Json::parse(body, nullptr, false)}};
  return answer.dump();
}
std::string UploadAnswer(uint64_t bytes, size_t max_piece, std::optional<uint64_t> length) {
  Json answer = {{"bytes", bytes}, {"max_piece", max_piece}};
  if (length) answer["content_length"] = *length;
  return answer.dump();
}
std::string ErrorAnswer(const std::string& message) {
  Json answer = {{"error", message}};
  return answer.dump();
}

// /upload: reads the body (x-refuse: answers 401 first), answers its size and largest piece.
// /count: the same, also noting the head (the upstream side of /forward).
// /forward: sends the body on to `upstream_port`'s /count with the upstream client.
// Anything else: a buffered route (edge.max_body_bytes).
class Handler final : public RequestHandler {
 public:
  Handler(asio::io_context& io, Seen& seen, const int& upstream_port)
      : pool_(io, UpstreamPoolOptions{}), seen_(seen), upstream_port_(upstream_port) {}

  bool StreamsBody(std::string_view, std::string_view path) const override {
    return path == "/upload" || path == "/count" || path == "/forward";
  }

  asio::awaitable<std::string> Handle(HttpRequest& request, ResponseWriter& writer) override {
    {
      std::lock_guard lock(seen_.mu);
      ++seen_.calls;
      if (request.path == "/count") seen_.upstream_headers = request.headers;
    }
    HttpHeaders json = JsonHead();
    if (request.path == "/forward") {
      UpstreamRequest upstream;
      upstream.url =
          UpstreamUrl{false, "127.0.0.1", static_cast<uint16_t>(upstream_port_), "/count"};
      upstream.method = "POST";
      upstream.body_stream = request.body_stream;
      auto call = pool_.NewCall(std::move(upstream), UpstreamTimeouts{});
      UpstreamStatus st = co_await call->Start();
      std::string body;
      if (st == UpstreamStatus::kOk) st = co_await call->ReadAll(body);
      co_await writer.Send(st == UpstreamStatus::kOk ? 200 : 502, json, ForwardAnswer(st, body));
      co_return "forward";
    }
    if (request.body_stream == nullptr) {
      co_await writer.Send(200, json, UploadAnswer(request.body.size(), 0, std::nullopt));
      co_return "buffered";
    }
    BodyStream& body = *request.body_stream;
    if (!request.Header("x-refuse").empty()) {
      {
        std::lock_guard lock(seen_.mu);
        ++seen_.refused;
        seen_.refused_read += body.bytes_read();
      }
      std::string refusal = R"({"error":{"message":"no"}})";
      co_await writer.Send(401, json, std::move(refusal));
      co_return "refused";
    }
    size_t max_piece = 0;
    std::string piece;
    for (;;) {
      if (!co_await body.Read(piece)) {
        const auto failure = *body.failure();
        {
          std::lock_guard lock(seen_.mu);
          seen_.failure = failure;
        }
        if (failure.status != 0)
          co_await writer.Send(failure.status, json, ErrorAnswer(failure.message));
        co_return "failed";
      }
      max_piece = std::max(max_piece, piece.size());
      if (body.done()) break;
    }
    co_await writer.Send(200, json,
                         UploadAnswer(body.bytes_read(), max_piece, body.content_length()));
    co_return "upload";
  }

 private:
  UpstreamPool pool_;
  Seen& seen_;
  const int& upstream_port_;
};

class Conn {
 public:
  explicit Conn(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("connect");
    timeval two_seconds{2, 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &two_seconds, sizeof two_seconds);
  }
  ~Conn() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until the server closes, `timeout` passes, or (until_reply) one whole response came.
  std::string Read(std::chrono::milliseconds timeout, bool* closed = nullptr,
                   bool until_reply = false) {
    auto end = Clock::now() + timeout;
    std::string out;
    char buf[16 * 1024];
    if (closed) *closed = false;
    for (;;) {
      if (until_reply && Complete(out)) return out;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
      if (left.count() <= 0) return out;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return out;
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        if (closed) *closed = true;
        return out;
      }
      out.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  static bool Complete(const std::string& text) {
    auto head_end = text.find("\r\n\r\n");
    if (head_end == std::string::npos) return false;
    auto at = text.find("content-length: ");
    if (at == std::string::npos || at > head_end) at = text.find("Content-Length: ");
    if (at == std::string::npos || at > head_end) return true;
    return text.size() >= head_end + 4 + std::stoul(text.substr(at + 16));
  }
  int fd_ = -1;
};

struct Reply {
  int status = 0;
  std::string head;
  Json json;
};

Reply Parse(const std::string& text) {
  Reply reply;
  if (text.rfind("HTTP/1.1 ", 0) != 0) return reply;
  reply.status = std::stoi(text.substr(9, 3));
  auto head_end = text.find("\r\n\r\n");
  if (head_end == std::string::npos) return reply;
  reply.head = text.substr(0, head_end);
  for (char& c : reply.head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  reply.json = Json::parse(text.substr(head_end + 4), nullptr, false);
  return reply;
}

std::string Chunked(const std::string& data, size_t chunk) {
  std::string out;
  char size[32];
  for (size_t at = 0; at < data.size(); at += chunk) {
    size_t n = std::min(chunk, data.size() - at);
    std::snprintf(size, sizeof size, "%zx\r\n", n);
    out += size;
    out.append(data, at, n);
    out += "\r\n";
  }
  return out + "0\r\n\r\n";
}

class StreamedBodyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    upstream_ = Start(0);
    upstream_port_ = upstream_->port();
    edge_ = Start(upstream_port_);
  }
  void TearDown() override {
    edge_->Shutdown(Clock::now() + 2s);
    upstream_->Shutdown(Clock::now() + 2s);
  }

  std::unique_ptr<HttpServer> Start(int) {
    HttpServerOptions options;
    options.listen = "127.0.0.1:0";
    options.threads = 1;
    options.max_body_bytes = kMaxBody;
    options.max_upload_bytes = kMaxUpload;
    options.read_timeout = 500ms;
    auto server = std::make_unique<HttpServer>(options, registry_, [this](asio::io_context& io) {
      return std::make_unique<Handler>(io, seen_, upstream_port_);
    });
    server->Start();
    return server;
  }

  std::string Head(const std::string& path, const std::string& extra) {
    return "POST " + path + " HTTP/1.1\r\nhost: x\r\n" + extra + "\r\n";
  }

  prometheus::Registry registry_;
  Seen seen_;
  int upstream_port_ = 0;
  std::unique_ptr<HttpServer> upstream_;
  std::unique_ptr<HttpServer> edge_;
};

TEST_F(StreamedBodyTest, ContentLengthBodyComesInBoundedPieces) {
  const std::string data(3 * 1024 * 1024, 'x');  // far over max_body_bytes, under the upload limit
  Conn conn(edge_->port());
  ASSERT_TRUE(
      conn.Send(Head("/upload", "content-length: " + std::to_string(data.size()) + "\r\n")));
  ASSERT_TRUE(conn.Send(data));
  Reply reply = Parse(conn.Read(5s, nullptr, true));
  ASSERT_EQ(reply.status, 200) << reply.head;
  EXPECT_EQ(reply.json["bytes"], data.size());
  EXPECT_EQ(reply.json["content_length"], data.size());
  EXPECT_LE(reply.json["max_piece"].get<size_t>(), 64u * 1024);
  EXPECT_EQ(reply.head.find("connection: close"), std::string::npos);
  // The connection carries the next request.
  ASSERT_TRUE(conn.Send(Head("/upload", "content-length: 5\r\n") + "hello"));
  reply = Parse(conn.Read(5s, nullptr, true));
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.json["bytes"], 5);
}

TEST_F(StreamedBodyTest, ChunkedBodyIsDecodedInBoundedPieces) {
  const std::string data(2 * 1024 * 1024 + 17, 'y');
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/upload", "transfer-encoding: chunked\r\n")));
  ASSERT_TRUE(conn.Send(Chunked(data, 1000)));
  Reply reply = Parse(conn.Read(5s, nullptr, true));
  ASSERT_EQ(reply.status, 200) << reply.head;
  EXPECT_EQ(reply.json["bytes"], data.size());
  EXPECT_FALSE(reply.json.contains("content_length"));
  EXPECT_LE(reply.json["max_piece"].get<size_t>(), 64u * 1024);
}

TEST_F(StreamedBodyTest, BufferedRoutesKeepTheSmallLimit) {
  Conn conn(edge_->port());
  ASSERT_TRUE(
      conn.Send(Head("/other", "content-length: " + std::to_string(kMaxBody + 1) + "\r\n")));
  bool closed = false;
  Reply reply = Parse(conn.Read(3s, &closed));
  EXPECT_EQ(reply.status, 413);
  EXPECT_TRUE(closed);
  EXPECT_EQ(seen_.calls, 0);
}

TEST_F(StreamedBodyTest, DeclaredLengthOverTheUploadLimitIs413BeforeTheHandler) {
  Conn conn(edge_->port());
  ASSERT_TRUE(
      conn.Send(Head("/upload", "content-length: " + std::to_string(kMaxUpload + 1) + "\r\n")));
  bool closed = false;
  Reply reply = Parse(conn.Read(3s, &closed));
  EXPECT_EQ(reply.status, 413);
  EXPECT_TRUE(closed);
  EXPECT_EQ(seen_.calls, 0);
}

TEST_F(StreamedBodyTest, ChunkedBodyOverTheUploadLimitFailsTheRead) {
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/upload", "transfer-encoding: chunked\r\n")));
  const std::string piece = Chunked(std::string(1024 * 1024, 'z'), 64 * 1024);
  const std::string body = piece.substr(0, piece.size() - 5);  // without the last chunk
  bool sent = true;
  for (int i = 0; i < 10 && sent; ++i) sent = conn.Send(body);
  bool closed = false;
  Reply reply = Parse(conn.Read(3s, &closed));
  EXPECT_EQ(reply.status, 413);
  EXPECT_TRUE(closed);
  std::lock_guard lock(seen_.mu);
  ASSERT_TRUE(seen_.failure.has_value());
  EXPECT_EQ(seen_.failure->status, 413);
}

TEST_F(StreamedBodyTest, AmbiguousFramingIsStillRefused) {
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/upload", "content-length: 5\r\ntransfer-encoding: chunked\r\n")));
  bool closed = false;
  Reply reply = Parse(conn.Read(3s, &closed));
  EXPECT_EQ(reply.status, 400);
  EXPECT_TRUE(closed);
  EXPECT_EQ(seen_.calls, 0);
}

TEST_F(StreamedBodyTest, RefusalBeforeTheBodyReadsNoneOfItAndCloses) {
  Conn conn(edge_->port());
  // The client waits for 100 Continue before sending 5 MB: it must get the refusal instead.
  ASSERT_TRUE(conn.Send(
      Head("/upload", "x-refuse: 1\r\nexpect: 100-continue\r\ncontent-length: 5242880\r\n")));
  bool closed = false;
  std::string text = conn.Read(4s, &closed);
  Reply reply = Parse(text);
  EXPECT_EQ(reply.status, 401) << text.substr(0, 200);
  EXPECT_NE(reply.head.find("connection: close"), std::string::npos);
  EXPECT_TRUE(closed) << "the connection stays open with an unread body";
  std::lock_guard lock(seen_.mu);
  EXPECT_EQ(seen_.refused, 1);
  EXPECT_EQ(seen_.refused_read, 0u);
}

TEST_F(StreamedBodyTest, RefusalWhileTheClientSendsDrainsBoundedlyAndCloses) {
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/upload", "x-refuse: 1\r\ncontent-length: 1048576\r\n")));
  ASSERT_TRUE(conn.Send(std::string(256 * 1024, 'q')));  // part of it, then the client waits
  bool closed = false;
  const auto t0 = Clock::now();
  Reply reply = Parse(conn.Read(5s, &closed));
  EXPECT_EQ(reply.status, 401);
  EXPECT_TRUE(closed);
  EXPECT_LT(Clock::now() - t0, 4s) << "the drain after a refusal is bounded";
}

TEST_F(StreamedBodyTest, ClientThatStopsMidUploadFailsTheReadAndTheServerServesOn) {
  {
    Conn conn(edge_->port());
    ASSERT_TRUE(conn.Send(Head("/upload", "content-length: 1048576\r\n")));
    ASSERT_TRUE(conn.Send(std::string(100 * 1024, 'a')));
    std::this_thread::sleep_for(100ms);
    conn.Close();  // gone mid-upload
  }
  for (int i = 0; i < 50; ++i) {
    {
      std::lock_guard lock(seen_.mu);
      if (seen_.failure) break;
    }
    std::this_thread::sleep_for(20ms);
  }
  {
    std::lock_guard lock(seen_.mu);
    ASSERT_TRUE(seen_.failure.has_value()) << "the handler's read did not fail";
  }
  {
    Conn stalled(edge_->port());  // sends part and stalls: the read timeout (500 ms) ends it
    ASSERT_TRUE(stalled.Send(Head("/upload", "content-length: 1048576\r\n")));
    ASSERT_TRUE(stalled.Send(std::string(1000, 'b')));
    bool closed = false;
    const auto t0 = Clock::now();
    stalled.Read(3s, &closed);
    EXPECT_TRUE(closed);
    EXPECT_LT(Clock::now() - t0, 2s);
  }
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/upload", "content-length: 3\r\n") + "abc"));
  Reply reply = Parse(conn.Read(3s, nullptr, true));
  EXPECT_EQ(reply.status, 200);
  // The reply is out just before its request stops counting.
  for (int i = 0; i < 100 && edge_->in_flight() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(edge_->in_flight(), 0);
}

TEST_F(StreamedBodyTest, UpstreamClientSendsTheBodyOnWithItsLength) {
  const std::string data(3 * 1024 * 1024 + 5, 'u');
  Conn conn(edge_->port());
  ASSERT_TRUE(
      conn.Send(Head("/forward", "content-length: " + std::to_string(data.size()) + "\r\n")));
  ASSERT_TRUE(conn.Send(data));
  Reply reply = Parse(conn.Read(10s, nullptr, true));
  ASSERT_EQ(reply.status, 200) << reply.json.dump();
  EXPECT_EQ(reply.json["upstream"]["bytes"], data.size());
  EXPECT_EQ(reply.json["upstream"]["content_length"], data.size());
  std::lock_guard lock(seen_.mu);
  bool chunked = false;
  for (const auto& [name, value] : seen_.upstream_headers) chunked |= name == "transfer-encoding";
  EXPECT_FALSE(chunked);
}

TEST_F(StreamedBodyTest, UpstreamClientSendsABodyOfUnknownLengthChunked) {
  const std::string data(1024 * 1024 + 3, 'c');
  Conn conn(edge_->port());
  ASSERT_TRUE(conn.Send(Head("/forward", "transfer-encoding: chunked\r\n")));
  ASSERT_TRUE(conn.Send(Chunked(data, 4096)));
  Reply reply = Parse(conn.Read(10s, nullptr, true));
  ASSERT_EQ(reply.status, 200) << reply.json.dump();
  EXPECT_EQ(reply.json["upstream"]["bytes"], data.size());
  EXPECT_FALSE(reply.json["upstream"].contains("content_length"));
  std::lock_guard lock(seen_.mu);
  std::string encoding;
  for (const auto& [name, value] : seen_.upstream_headers)
    if (name == "transfer-encoding") encoding = value;
  EXPECT_EQ(encoding, "chunked");
}

TEST_F(StreamedBodyTest, ClientLeavingMidUploadEndsTheUpstreamCall) {
  {
    Conn conn(edge_->port());
    ASSERT_TRUE(conn.Send(Head("/forward", "content-length: 1048576\r\n")));
    ASSERT_TRUE(conn.Send(std::string(200 * 1024, 'd')));
    std::this_thread::sleep_for(100ms);
    conn.Close();
  }
  // The upstream's read of the forwarded body fails (the edge closed that connection too).
  bool upstream_failed = false;
  for (int i = 0; i < 100 && !upstream_failed; ++i) {
    std::this_thread::sleep_for(20ms);
    std::lock_guard lock(seen_.mu);
    upstream_failed = seen_.failure.has_value();
  }
  EXPECT_TRUE(upstream_failed);
  for (int i = 0; i < 100 && edge_->in_flight() > 0; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(edge_->in_flight(), 0);
}

}  // namespace
}  // namespace tollgate::edge
