// What the HTTP server (http_server.cpp, the one Beast file on the client side) and the request
// handlers (dispatched by proxy.cpp, see routes.h) share: a parsed request, a response writer,
// the handler interface. Asio coroutines only; no Beast here.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tollgate/errors.h"

namespace boost::asio {
class io_context;
}

namespace tollgate::edge {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

class BodyStream;

struct HttpRequest {
  std::string method;
  std::string target;
  std::string path;     // target without the query
  HttpHeaders headers;  // names in lower case
  std::string body;     // empty when the body is streamed (body_stream)
  // Set for a route that streams its request body (RequestHandler::StreamsBody): nothing of the
  // body has been read when the handler starts; it reads the body piece by piece, or not at all.
  BodyStream* body_stream = nullptr;
  std::string request_id;  // the client's x-request-id if acceptable, else generated
  std::string client_ip;
  // When the whole request had arrived (a streamed body: when its head had).
  std::chrono::steady_clock::time_point received;

  // The first header named `name` (lower case), or "".
  std::string_view Header(std::string_view name) const;
};

// A request body read while its handler runs, in pieces of at most 64 KiB, so an upload of any
// size passes with bounded memory; the next piece is read from the client only when asked for
// (backpressure). The server's framing checks and limits apply as for a buffered body, with the
// route's own size limit (edge.max_upload_bytes); each piece must arrive within the read timeout.
// A client's `Expect: 100-continue` is answered at the first Read, so a request refused before
// (authentication) never makes the client send its body. A body the handler did not read to the
// end closes the connection after the response (what the client still sends is drained
// briefly, boundedly).
class BodyStream {
 public:
  virtual ~BodyStream() = default;
  // The declared length (Content-Length); nullopt for a chunked body.
  virtual std::optional<uint64_t> content_length() const = 0;
  // Replaces `piece` with the next bytes of the body; true with an empty piece at its end.
  // false: the body cannot be read (the client left or stalled, bad framing, over the limit);
  // failure() says why, and every later Read fails too.
  virtual boost::asio::awaitable<bool> Read(std::string& piece) = 0;
  virtual bool done() const = 0;            // the whole body has been read
  virtual uint64_t bytes_read() const = 0;  // payload bytes handed out so far
  struct Failure {
    int status = 400;  // what the client should be told: 400, 413; 0: it is gone, say nothing
    std::string message;
  };
  virtual const std::optional<Failure>& failure() const = 0;
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
  // Whether the route of `method` `path` reads its body itself (HttpRequest::body_stream) instead
  // of having the server read it whole (edge.max_body_bytes) before Handle.
  virtual bool StreamsBody(std::string_view method, std::string_view path) const {
    (void)method;
    (void)path;
    return false;
  }
  // An error the server answers itself, before or instead of Handle (a body too large, bad
  // framing, a handler that failed), in the format the clients of `method` `path` expect; the
  // path is empty when the head could not be read. The default is OpenAI's.
  struct ErrorReply {
    int status = 0;
    std::string body;
  };
  virtual ErrorReply ServerError(std::string_view method, std::string_view path, ErrorCode code,
                                 std::string_view message) const;
};

// One handler per io_context (per I/O thread), so handlers keep per-thread state such as
// upstream connection pools without locks.
using HandlerFactory = std::function<std::unique_ptr<RequestHandler>(boost::asio::io_context&)>;

// The client's request id if it is short and plain (it is echoed and logged), else a new one.
std::string AcceptOrMakeRequestId(std::string_view client_value);

// "x-tollgate-overhead-ms" value: milliseconds with one decimal.
std::string FormatMillis(std::chrono::nanoseconds duration);

}  // namespace tollgate::edge
