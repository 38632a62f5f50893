// The edge's HTTP client for upstream providers (Beast lives in upstream_client.cpp only):
// keep-alive connections pooled per (scheme, host, port), TLS with SNI and certificate
// verification, and connect / first-byte / between-chunks / total timeouts.
//
// One UpstreamPool per io_context: a call and its connection stay on that thread.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "src/http.h"
#include "src/openai.h"

namespace boost::asio {
class io_context;
}

namespace tollgate::edge {

struct UpstreamTimeouts {
  std::chrono::milliseconds connect{5000};      // DNS, TCP and TLS handshake
  std::chrono::milliseconds first_byte{60000};  // request sent -> response head
  std::chrono::milliseconds idle{60000};        // between two pieces of the body
  std::chrono::milliseconds total{600000};      // the whole exchange
};

struct UpstreamPoolOptions {
  std::string ca_file;  // extra trust anchors (PEM), on top of the system's
  size_t max_idle_per_host = 256;
  std::chrono::milliseconds keepalive{30000};  // an idle connection older than this is closed
  // A connection idle for less than this is reused without first checking that the server has
  // not closed it (a non-blocking peek, one syscall): servers close idle connections after
  // seconds, and one found closed anyway is retried on a fresh connection (UpstreamCall::Start).
  std::chrono::milliseconds check_idle_after{500};
  size_t max_buffered_body = 64 * 1024 * 1024;  // ReadAll's limit
};

struct UpstreamRequest {
  UpstreamUrl url;
  std::string method = "POST";
  HttpHeaders headers;  // besides host, content-length, connection
  std::string body;
  // When set, the body is read from here as it is sent (instead of `body`), one piece at a time
  // (the next is read once the previous was written: backpressure both ways), with its
  // Content-Length when known, else chunked. Such a call is not retried on a fresh connection
  // once a piece was read, and a body that fails to arrive ends it with kClientBodyFailed.
  BodyStream* body_stream = nullptr;
};

enum class UpstreamStatus {
  kOk,
  kConnectError,      // DNS, refused, TLS handshake or verification failed, reset before an answer
  kTimeout,           // a timeout fired
  kBroken,            // the answer was cut off or malformed
  kCancelled,         // Cancel() was called
  kClientBodyFailed,  // the streamed request body could not be read (UpstreamRequest::body_stream)
};

const char* UpstreamStatusName(UpstreamStatus status);

class UpstreamPool;

// One request/response exchange on a pooled connection. Destroying the call returns the
// connection to its pool when the exchange ended cleanly; otherwise the connection is closed.
class UpstreamCall final {
 public:
  ~UpstreamCall();
  UpstreamCall(const UpstreamCall&) = delete;
  UpstreamCall& operator=(const UpstreamCall&) = delete;

  // Connects (or takes an idle connection), sends the request and reads the response head.
  boost::asio::awaitable<UpstreamStatus> Start();
  int status() const;
  // The whole request was written to the upstream (it may be generating, and billing, for it),
  // whatever happened after.
  bool request_sent() const;
  // A response header by name (case-insensitive), or "".
  std::string Header(std::string_view name) const;
  // Appends the next piece of the body as soon as it arrives. kOk with finished() at the end.
  boost::asio::awaitable<UpstreamStatus> Read(std::string& out);
  // Reads the rest of the body (up to the pool's max_buffered_body).
  boost::asio::awaitable<UpstreamStatus> ReadAll(std::string& out);
  bool finished() const;
  // Closes the connection at once (the provider sees the reset and stops generating); a
  // pending Start or Read completes with kCancelled. Call on the pool's thread.
  void Cancel();
  // What went wrong, for logs; never contains the request (nor its key).
  const std::string& error_detail() const;

 private:
  friend class UpstreamPool;
  struct Impl;
  explicit UpstreamCall(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class UpstreamPool final {
 public:
  // Throws std::runtime_error when ca_file cannot be loaded.
  UpstreamPool(boost::asio::io_context& io, UpstreamPoolOptions options);
  ~UpstreamPool();

  std::unique_ptr<UpstreamCall> NewCall(UpstreamRequest request, UpstreamTimeouts timeouts);
  size_t idle_connections() const;

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace tollgate::edge
