// The edge's HTTP/1.1 server (Boost.Beast). Beast stays inside http_server.cpp: handlers see
// only http.h. One io_context and one SO_REUSEPORT acceptor per thread; a connection never
// changes thread, and each thread has its own RequestHandler.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "src/client_ip.h"
#include "src/http.h"

namespace prometheus {
class Registry;
}

namespace tollgate::edge {

struct HttpServerOptions {
  std::string listen = "127.0.0.1:8080";
  int threads = 0;                            // 0: one per core
  uint64_t max_body_bytes = 4 * 1024 * 1024;  // larger bodies get 413
  // The limit of a body a route streams (RequestHandler::StreamsBody): uploads.
  uint64_t max_upload_bytes = 512ull * 1024 * 1024;
  uint32_t max_header_bytes = 16 * 1024;  // larger headers get 413 (then the connection closes)
  // Peers allowed to name the client in Forwarded / X-Forwarded-For (see client_ip.h); empty:
  // the socket's peer is always the client.
  TrustedProxies trusted_proxies;
  // A keep-alive connection with no request in sight is closed after this.
  std::chrono::milliseconds idle_timeout{60000};
  // Once a request's first byte arrived, its headers and body must arrive within this; a
  // streamed body's pieces must each arrive within this.
  std::chrono::milliseconds read_timeout{30000};
  // Each write to the client (a response, one streamed event) must finish within this: a client
  // that stops reading is dropped (and its upstream call cancelled).
  std::chrono::milliseconds write_timeout{30000};
};

class HttpServer final {
 public:
  // `handlers` makes one handler per I/O thread; without it every request but /healthz and
  // /readyz gets 404.
  HttpServer(HttpServerOptions options, prometheus::Registry& registry,
             HandlerFactory handlers = {});
  ~HttpServer();

  // Binds and starts the I/O threads; throws if the address cannot be bound.
  void Start();
  int port() const;
  // Stops accepting; /readyz answers 503 from now on.
  void StopAccepting();
  // Stops accepting and waits for in-flight requests until `deadline`; the I/O threads keep
  // running (callbacks of outstanding calls can still be delivered).
  void Drain(std::chrono::steady_clock::time_point deadline);
  // Drain, then stops the I/O threads and closes everything.
  void Shutdown(std::chrono::steady_clock::time_point deadline);
  int in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
