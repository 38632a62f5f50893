// The upstream client's TLS: certificate verification against the configured trust anchors,
// SNI and host-name verification, against a real `openssl s_server` with a throwaway CA.
#include "src/upstream_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdlib>
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

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
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

TEST(UpstreamTls, MissingCaFileFailsAtConstruction) {
  asio::io_context io;
  UpstreamPoolOptions options;
  options.ca_file = "/nonexistent/ca.pem";
  EXPECT_THROW(UpstreamPool(io, options), std::runtime_error);
}

}  // namespace
}  // namespace tollgate::edge
