// The upstream client's TLS: certificate verification against the configured trust anchors,
// SNI and host-name verification, against a real `openssl s_server` with a throwaway CA. And its
// keep-alive pool against a plain server that keeps or closes its connections.
#include "src/upstream_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "test/child_process.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using ::tollgate::testing::ChildProcess;

// A TCP socket bound to a free loopback port; `port` is set to it.
int BindLoopback(int& port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  return fd;
}

int FreePort() {
  int port = 0;
  close(BindLoopback(port));
  return port;
}

bool CanConnect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

// A TLS server for "localhost" (and not for 127.0.0.1) whose certificate no system trusts.
class TlsServer {
 public:
  TlsServer() {
    dir_ = std::filesystem::temp_directory_path() /
           ("tollgate-tls-" + std::to_string(getpid()) + "-" + std::to_string(FreePort()));
    std::filesystem::create_directories(dir_);
    std::string cmd =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost -keyout " +
        (dir_ / "key.pem").string() + " -out " + (dir_ / "cert.pem").string() + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return;
    port_ = FreePort();
    server_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{
            "openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port_), "-cert",
            (dir_ / "cert.pem").string(), "-key", (dir_ / "key.pem").string(), "-www"},
        ChildProcess::Options{.quiet = true});
    for (int i = 0; i < 100 && !CanConnect(port_); ++i) std::this_thread::sleep_for(50ms);
  }
  ~TlsServer() {
    if (server_) server_->Stop(SIGTERM);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  bool ok() const { return server_ && CanConnect(port_); }
  int port() const { return port_; }
  std::string ca_file() const { return (dir_ / "cert.pem").string(); }

 private:
  std::filesystem::path dir_;
  std::unique_ptr<ChildProcess> server_;
  int port_ = 0;
};

struct Result {
  UpstreamStatus start = UpstreamStatus::kCancelled;
  int status = 0;
  std::string body;
  std::string error;
};

Result Get(const std::string& ca_file, const std::string& host, int port) {
  asio::io_context io;
  UpstreamPoolOptions options;
  options.ca_file = ca_file;
  UpstreamPool pool(io, options);
  Result result;
  UpstreamRequest request;
  request.url = {true, host, static_cast<uint16_t>(port), "/"};
  request.method = "GET";
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        auto call = pool.NewCall(request, UpstreamTimeouts{2s, 2s, 2s, 5s});
        result.start = co_await call->Start();
        result.error = call->error_detail();
        if (result.start != UpstreamStatus::kOk) co_return;
        result.status = call->status();
        co_await call->ReadAll(result.body);
      },
      asio::detached);
  io.run();
  return result;
}

TEST(UpstreamTls, VerifiesTheCertificateAndTheHostName) {
  TlsServer server;
  if (!server.ok()) GTEST_SKIP() << "openssl s_server unavailable";

  auto trusted = Get(server.ca_file(), "localhost", server.port());
  ASSERT_EQ(trusted.start, UpstreamStatus::kOk) << trusted.error;
  EXPECT_EQ(trusted.status, 200);
  EXPECT_NE(trusted.body.find("s_server"), std::string::npos) << trusted.body;

  // Not among the trust anchors: refused.
  auto untrusted = Get("", "localhost", server.port());
  EXPECT_EQ(untrusted.start, UpstreamStatus::kConnectError);
  EXPECT_NE(untrusted.error.find("certificate verify failed"), std::string::npos)
      << untrusted.error;

  // Trusted certificate, but not for this name.
  auto wrong_name = Get(server.ca_file(), "127.0.0.1", server.port());
  EXPECT_EQ(wrong_name.start, UpstreamStatus::kConnectError);
}

// A plain HTTP/1.1 server on 127.0.0.1, one connection at a time: each request is answered
// "ok" with keep-alive, and with `close_after_answer` the server then closes the connection
// anyway (as a server whose idle timeout is shorter than the pool's does), without saying so.
class KeepAliveServer {
 public:
  explicit KeepAliveServer(bool close_after_answer) : close_after_answer_(close_after_answer) {
    listener_ = BindLoopback(port_);
    listen(listener_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~KeepAliveServer() {
    shutdown(listener_, SHUT_RDWR);  // ends accept()
    thread_.join();
    close(listener_);
  }
  int port() const { return port_; }
  int connections() const { return connections_; }
  int requests() const { return requests_; }

 private:
  void Serve() {
    for (;;) {
      int fd = accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      ++connections_;
      std::string in;
      char buf[4096];
      for (;;) {
        size_t head_end = in.find("\r\n\r\n");
        if (head_end != std::string::npos) {
          size_t length = 0;
          if (auto at = in.find("Content-Length: "); at != std::string::npos && at < head_end)
            length = std::stoul(in.substr(at + 16));
          if (in.size() >= head_end + 4 + length) {
            in.erase(0, head_end + 4 + length);
            ++requests_;
            const char* answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if (write(fd, answer, strlen(answer)) < 0 || close_after_answer_) break;
            continue;
          }
        }
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
      }
      close(fd);
    }
  }

  const bool close_after_answer_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

// `count` POSTs one after the other through one pool, `pause` apart (each call's connection is
// back in the pool before the next starts): the answers' bodies, "" for a failed call.
std::vector<std::string> PostInTurn(int port, std::chrono::milliseconds check_idle_after, int count,
                                    std::chrono::milliseconds pause) {
  asio::io_context io;
  UpstreamPoolOptions options;
  options.check_idle_after = check_idle_after;
  UpstreamPool pool(io, options);
  std::vector<std::string> bodies;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        for (int i = 0; i < count; ++i) {
          UpstreamRequest request;
          request.url = {false, "127.0.0.1", static_cast<uint16_t>(port), "/v1/chat/completions"};
          request.body = R"({"model":"m"})";
          std::string body;
          {
            auto call = pool.NewCall(std::move(request), UpstreamTimeouts{2s, 2s, 2s, 5s});
            if (co_await call->Start() == UpstreamStatus::kOk && call->status() == 200)
              co_await call->ReadAll(body);
          }
          bodies.push_back(body);
          asio::steady_timer timer(io, pause);
          co_await timer.async_wait(asio::use_awaitable);
        }
      },
      asio::detached);
  io.run();
  return bodies;
}

TEST(UpstreamPool, ReusesAKeptConnectionWithOrWithoutCheckingIt) {
  for (auto check_idle_after : {0ms, 60000ms}) {
    KeepAliveServer server(false);
    auto bodies = PostInTurn(server.port(), check_idle_after, 3, 20ms);
    EXPECT_EQ(bodies, (std::vector<std::string>{"ok", "ok", "ok"}));
    EXPECT_EQ(server.connections(), 1) << "check_idle_after " << check_idle_after.count();
  }
}

// A server that closed a pooled connection: found by the check (an idle longer than
// check_idle_after), or, without it (a brief idle), when the request finds the connection
// closed, and then sent once more on a fresh one. Either way every request is answered once.
TEST(UpstreamPool, AServerThatClosesIdleConnectionsStillAnswers) {
  for (auto check_idle_after : {0ms, 60000ms}) {
    KeepAliveServer server(true);
    // 50 ms apart: the server's close has reached the client before the next request.
    auto bodies = PostInTurn(server.port(), check_idle_after, 3, 50ms);
    EXPECT_EQ(bodies, (std::vector<std::string>{"ok", "ok", "ok"}))
        << "check_idle_after " << check_idle_after.count();
    EXPECT_EQ(server.connections(), 3);
    EXPECT_EQ(server.requests(), 3);
  }
}

TEST(UpstreamTls, MissingCaFileFailsAtConstruction) {
  asio::io_context io;
  UpstreamPoolOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  EXPECT_THROW(UpstreamPool(io, options), std::runtime_error);
}

}  // namespace
}  // namespace tollgate::edge
