// What the HTTP server (http_server.cpp, the one Beast file on the client side) and the request
// handlers (dispatched by proxy.cpp, see routes.h) share: a parsed request, a response writer,
// the handler interface. Asio coroutines only; no Beast here.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace tollgate::edge {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;
  std::string target;
  std::string path;     // target without the query
  HttpHeaders headers;  // names in lower case
  std::string body;
  std::string request_id;  // the client's x-request-id if acceptable, else generated
  std::string client_ip;
  std::chrono::steady_clock::time_point received;  // when the whole request had arrived

  // The first header named `name` (lower case), or "".
  std::string_view Header(std::string_view name) const;
};

// Writes one response to the client: either whole (Send) or streamed (BeginStream, then
// WriteChunk per event, then EndStream). Each returns false once the client is gone.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  virtual boost::asio::awaitable<bool> Send(int status, HttpHeaders headers, std::string body) = 0;
  // Sends the head of a chunked response.
  virtual boost::asio::awaitable<bool> BeginStream(int status, HttpHeaders headers) = 0;
  // One chunk, written and flushed before this returns.
  virtual boost::asio::awaitable<bool> WriteChunk(std::string_view data) = 0;
  virtual boost::asio::awaitable<bool> EndStream() = 0;
  // While a stream is open, runs `on_gone` (on the connection's executor) as soon as the client
  // closes its end, so the handler can stop the upstream without waiting for its next write.
  virtual void WatchDisconnect(std::function<void()> on_gone) = 0;
  virtual bool client_gone() const = 0;
  virtual bool started() const = 0;  // a status line went out
  virtual int status() const = 0;
};

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // Answers `request` through `writer`; returns the route label for metrics.
  virtual boost::asio::awaitable<std::string> Handle(HttpRequest& request,
                                                     ResponseWriter& writer) = 0;
};

// One handler per io_context (per I/O thread), so handlers keep per-thread state such as
// upstream connection pools without locks.
using HandlerFactory = std::function<std::unique_ptr<RequestHandler>(boost::asio::io_context&)>;

// The client's request id if it is short and plain (it is echoed and logged), else a new one.
std::string AcceptOrMakeRequestId(std::string_view client_value);

// "x-tollgate-overhead-ms" value: milliseconds with one decimal.
std::string FormatMillis(std::chrono::nanoseconds duration);

}  // namespace tollgate::edge
