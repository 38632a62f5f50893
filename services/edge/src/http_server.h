// The edge's HTTP/1.1 server (Boost.Beast). Beast stays inside http_server.cpp.
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace prometheus {
class Registry;
}

namespace tollgate::edge {

struct HttpServerOptions {
  std::string listen = "127.0.0.1:8080";
  int threads = 0;  // 0: one per core
};

class HttpServer final {
 public:
  HttpServer(HttpServerOptions options, prometheus::Registry& registry);
  ~HttpServer();

  // Binds and starts the I/O threads; throws if the address cannot be bound.
  void Start();
  int port() const;
  // Stops accepting; /readyz answers 503 from now on.
  void StopAccepting();
  // Waits for in-flight requests until `deadline`, then closes everything.
  void Shutdown(std::chrono::steady_clock::time_point deadline);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
