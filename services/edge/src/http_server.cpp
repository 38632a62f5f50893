#include "src/http_server.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tollgate/errors.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

// After a 413 the connection closes; what the client still sends is read and dropped for a
// moment first, so the kernel does not reset the connection before the client read our answer.
constexpr auto kDrainTime = std::chrono::seconds(2);
constexpr size_t kDrainLimit = 64 * 1024 * 1024;

// Bytes asked of the socket per read. A connection's buffer holds at most the unparsed part of a
// request (a head up to max_header_bytes, or a chunked body's metadata up to kMaxChunkMetaBytes)
// plus one read.
constexpr size_t kReadSize = 64 * 1024;
// Chunked framing the parser must hold whole before it can act on it: a chunk-size line with its
// extensions, or the last chunk's line with the trailer section. Beast 1.74 bounds neither, so a
// line that never ends would grow the buffer until the read timeout.
constexpr size_t kMaxChunkMetaBytes = 4 * 1024;
// Our signal for "chunk metadata too long" out of ReadRequest.
constexpr auto kChunkMetaTooLong = http::error::buffer_overflow;

// Beast's string_body without its up-front reserve of the declared length: a streamed body is
// handed out piece by piece (its Content-Length may be 512 MiB), a buffered one stays within
// max_body_bytes either way.
struct RequestBody {
  using value_type = std::string;
  static std::uint64_t size(const value_type& body) { return body.size(); }
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<std::uint64_t>&, beast::error_code& ec) { ec = {}; }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, beast::error_code& ec) {
      const size_t n = beast::buffer_bytes(buffers);
      const size_t at = body_.size();
      body_.resize(at + n);
      asio::buffer_copy(asio::buffer(body_.data() + at, n), buffers);
      ec = {};
      return n;
    }
    void finish(beast::error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };
};

using RequestParser = http::request_parser<RequestBody>;

// How far ReadRequest reads: the head, the whole request, or the next piece of a streamed body.
enum class ReadUntil { kHead, kBody, kPiece };

// The wire bound of a body whose payload may be `payload_limit` bytes: the payload plus an
// eighth for chunked framing plus one chunk's metadata.
uint64_t WireLimit(uint64_t payload_limit) {
  return payload_limit + payload_limit / 8 + kMaxChunkMetaBytes;
}

// Feeds `parser` from `buffer` and the socket until `until` is reached. Beast's own read loop is
// not used because it grows the buffer for as long as a chunk-size line or a trailer section has
// not ended. Here:
// - the head's bytes stay within `limit` (max_header_bytes; else header_limit; the parser checks
//   too);
// - the body's bytes on the wire (payload plus chunked framing, counted in `wire` across the
//   pieces of a streamed body) stay within `limit` (WireLimit of the payload limit; else
//   body_limit; the payload alone is held to its limit by the parser), so a request cannot be
//   stretched with chunk extensions or tiny chunks;
// - an unfinished chunk-size line or trailer section stays within kMaxChunkMetaBytes.
// The buffer therefore never holds more than those bounds plus one read, and a streamed body's
// piece (kPiece) is at most what one read brought.
awaitable<beast::error_code> ReadRequest(beast::tcp_stream& stream, beast::flat_buffer& buffer,
                                         RequestParser& parser, ReadUntil until, uint64_t limit,
                                         uint64_t& wire) {
  const bool head_only = until == ReadUntil::kHead;
  beast::error_code ec;
  for (;;) {
    if (head_only ? parser.is_header_done() : parser.is_done()) co_return beast::error_code{};
    if (until == ReadUntil::kPiece && !parser.get().body().empty()) co_return beast::error_code{};
    if (buffer.size() > 0) {
      const size_t used = parser.put(buffer.data(), ec);
      if (ec == http::error::need_more) ec = {};
      if (ec) co_return ec;
      buffer.consume(used);
      wire += used;
      if (wire > limit) co_return head_only ? http::error::header_limit : http::error::body_limit;
      if (head_only && !parser.is_header_done() && wire + buffer.size() >= limit)
        co_return http::error::header_limit;
      if (used > 0) continue;
      // Nothing parsed: the buffer ends in an unfinished line.
      if (!head_only && buffer.size() > kMaxChunkMetaBytes) co_return kChunkMetaTooLong;
    }
    const size_t n = co_await stream.async_read_some(buffer.prepare(kReadSize),
                                                     asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::eof) {
      if (!parser.got_some()) co_return http::error::end_of_stream;
      parser.put_eof(ec);
      if (ec) co_return ec;
      continue;  // complete after all
    }
    if (ec) co_return ec;
    buffer.commit(n);
  }
}

// Trailers that arrived in one piece escaped ReadRequest's bound; they are held to it too. The
// fields after the first `head_fields` are the trailer's.
bool TrailerTooLong(const RequestParser& parser, size_t head_fields) {
  size_t trailer_bytes = 0, index = 0;
  for (const auto& field : parser.get())
    if (index++ >= head_fields)
      trailer_bytes += field.name_string().size() + field.value().size() + 4;
  return trailer_bytes > kMaxChunkMetaBytes;
}

// Answers `Expect: 100-continue` once, when the body is about to be read.
awaitable<beast::error_code> SendContinue(beast::tcp_stream& stream) {
  beast::error_code ec;
  http::response<http::empty_body> cont{http::status::continue_, 11};
  co_await http::async_write(stream, cont, asio::redirect_error(use_awaitable, ec));
  co_return ec;
}

tcp::endpoint ParseEndpoint(const std::string& listen) {
  auto colon = listen.rfind(':');
  auto host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {asio::ip::make_address(host),
          static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)))};
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A client's text quoted in an error message: short and printable.
std::string Quote(std::string_view text) {
  std::string out(text.substr(0, 64));
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return "'" + out + (text.size() > 64 ? "...'" : "'");
}

// RFC 9112 framing checks Beast leaves to us, on a parsed head; "" when the head is acceptable.
// Only `chunked` is accepted as a transfer coding, alone: anything else, or a Transfer-Encoding
// next to a Content-Length, could be framed differently by a proxy in front of us (request
// smuggling), so it is refused rather than guessed at.
std::string FramingError(const RequestParser::value_type& msg) {
  int hosts = 0, encodings = 0, lengths = 0;
  std::string_view encoding;
  for (const auto& field : msg) {
    switch (field.name()) {
      case http::field::host:
        ++hosts;
        break;
      case http::field::transfer_encoding:
        ++encodings;
        encoding = field.value();
        break;
      case http::field::content_length:
        ++lengths;
        break;
      default:
        break;
    }
  }
  if (hosts > 1) return "The request has more than one Host header.";
  if (hosts == 0 && msg.version() >= 11) return "An HTTP/1.1 request needs a Host header.";
  if (encodings == 0) return "";
  if (msg.version() < 11) return "Transfer-Encoding is not allowed in an HTTP/1.0 request.";
  if (encodings > 1) return "The request has more than one Transfer-Encoding header.";
  if (!beast::iequals(encoding, "chunked"))
    return "Unsupported Transfer-Encoding " + Quote(encoding) + ": only chunked is accepted.";
  if (lengths > 0) return "A request may not have both Transfer-Encoding and Content-Length.";
  return "";
}

// The state of a disconnect watch, shared with the operation it has pending on the socket,
// whose handler may run after the writer (or the whole session) is gone. A session keeps one
// for all its requests (ClientWriter's `reuse`): reused whenever no operation holds it.
struct Watch {
  bool active = false;
  std::function<void()> on_gone;
};

// Writes one response on a client connection, whole or as a chunked stream, and watches for the
// client hanging up while the handler waits on an upstream.
class ClientWriter final : public ResponseWriter {
 public:
  // `idle_buffer`: the session's read buffer, released when a stream starts if nothing of the
  // next request is in it (a held stream would keep its 4 KB; a whole answer keeps it for the
  // next request on the connection, which saves an allocation per request).
  ClientWriter(beast::tcp_stream& stream, unsigned version, bool keep_alive,
               std::chrono::milliseconds write_timeout, const BodyStream* body = nullptr,
               beast::flat_buffer* idle_buffer = nullptr, std::shared_ptr<Watch>* reuse = nullptr)
      : stream_(stream),
        version_(version),
        keep_alive_(keep_alive),
        write_timeout_(write_timeout),
        body_(body),
        idle_buffer_(idle_buffer),
        reuse_(reuse) {}
  ~ClientWriter() override {
    StopWatching();
    if (watch_) watch_->on_gone = nullptr;  // what it holds (the handler's state) goes now
  }

  awaitable<bool> Send(int status, HttpHeaders headers, std::string body) override {
    StopWatching();
    if (gone_ || started_) co_return false;
    started_ = true;
    status_ = status;
    http::response<http::string_body> res{static_cast<http::status>(status), version_};
    for (auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(KeepAlive());
    res.body() = std::move(body);
    res.prepare_payload();
    beast::error_code ec;
    stream_.expires_after(write_timeout_);
    co_await http::async_write(stream_, res, asio::redirect_error(use_awaitable, ec));
    complete_ = !ec;
    co_return Check(ec);
  }

  awaitable<bool> BeginStream(int status, HttpHeaders headers) override {
    if (gone_ || started_) co_return false;
    started_ = true;
    status_ = status;
    http::response<http::empty_body> res{static_cast<http::status>(status), version_};
    for (auto& [name, value] : headers) res.set(name, value);
    res.keep_alive(KeepAlive());
    res.chunked(true);
    if (idle_buffer_ != nullptr && idle_buffer_->size() == 0) idle_buffer_->shrink_to_fit();
    http::response_serializer<http::empty_body> serializer{res};
    beast::error_code ec;
    stream_.expires_after(write_timeout_);
    co_await http::async_write_header(stream_, serializer, asio::redirect_error(use_awaitable, ec));
    co_return Check(ec);
  }

  awaitable<bool> WriteChunk(std::string_view data) override {
    if (gone_) co_return false;
    beast::error_code ec;
    stream_.expires_after(write_timeout_);
    co_await asio::async_write(stream_,
                               http::make_chunk(asio::const_buffer(data.data(), data.size())),
                               asio::redirect_error(use_awaitable, ec));
    co_return Check(ec);
  }

  awaitable<bool> EndStream() override {
    StopWatching();
    if (gone_) co_return false;
    beast::error_code ec;
    stream_.expires_after(write_timeout_);
    co_await asio::async_write(stream_, http::make_chunk_last(),
                               asio::redirect_error(use_awaitable, ec));
    complete_ = !ec;
    co_return Check(ec);
  }

  void WatchDisconnect(std::function<void()> on_gone) override {
    StopWatching();
    if (gone_) return;
    if (reuse_ != nullptr && *reuse_ && reuse_->use_count() == 1) {
      watch_ = *reuse_;  // no operation of an earlier watch still holds it
    } else {
      watch_ = std::make_shared<Watch>();
      if (reuse_ != nullptr) *reuse_ = watch_;
    }
    watch_->active = true;
    watch_->on_gone = std::move(on_gone);
    ArmWatch(watch_);
  }

  bool client_gone() const override { return gone_; }
  bool started() const override { return started_; }
  int status() const override { return status_; }
  // The response went out whole, so the connection can carry the next request.
  bool complete() const { return complete_; }

 private:
  // Waits for the client's socket to turn readable, then peeks without blocking: end of stream
  // or a reset means the client left; bytes are its next (pipelined) request, which the session
  // reads later. Readiness can be spurious (nothing to peek): then it waits again.
  // (A pending one-byte MSG_PEEK receive instead of the wait saves Asio 1.74's epoll_ctl(MOD)
  // for a non-speculative operation, but Asio then tries the receive at once, an EAGAIN recv
  // as costly as the epoll_ctl: measured, not worth a second way of watching.)
  void ArmWatch(const std::shared_ptr<Watch>& watch) {
    int fd = stream_.socket().native_handle();
    stream_.socket().async_wait(tcp::socket::wait_read,
                                [this, watch, fd](const beast::error_code& ec) {
                                  if (!watch->active) return;  // stopped: `this` may be gone
                                  if (ec == asio::error::operation_aborted) {
                                    watch->active = false;
                                    return;
                                  }
                                  char c;
                                  ssize_t n = ec ? -1 : ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
                                  if (n < 0 && !ec && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                                    ArmWatch(watch);
                                    return;
                                  }
                                  watch->active = false;
                                  if (n > 0) return;
                                  gone_ = true;
                                  watch->on_gone();
                                });
  }

  // A streamed body not read to its end when the answer starts: the connection closes after it
  // (the rest of the body cannot be told from a next request).
  bool KeepAlive() {
    if (body_ != nullptr && !body_->done()) keep_alive_ = false;
    return keep_alive_;
  }

  bool Check(const beast::error_code& ec) {
    if (ec) gone_ = true;
    return !ec;
  }

  void StopWatching() {
    if (!watch_ || !watch_->active) return;
    watch_->active = false;
    beast::error_code ec;
    stream_.socket().cancel(ec);  // only the wait is pending here: writes are awaited in turn
  }

  beast::tcp_stream& stream_;
  unsigned version_;
  bool keep_alive_;
  std::chrono::milliseconds write_timeout_;
  const BodyStream* body_;
  beast::flat_buffer* idle_buffer_;
  std::shared_ptr<Watch>* reuse_;
  bool started_ = false;
  bool complete_ = false;
  bool gone_ = false;
  int status_ = 0;
  std::shared_ptr<Watch> watch_;
};

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  HandlerFactory factory;
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  // This server among all in the process (tests run several, one after another): names its
  // entries in the threads' counter caches, which a pointer, reused after a free, could not.
  const uint64_t serial = NextSerial();
  static uint64_t NextSerial() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::unique_ptr<RequestHandler>> handlers;
  std::vector<std::thread> threads;
  std::atomic<bool> accepting{true};
  std::atomic<int> in_flight{0};
  int port = 0;

  // Family::Add builds a label map and takes the family's lock; a request finds its counter in
  // its thread's cache instead (a few dozen route × code pairs, scanned).
  void Count(const std::string& route, int status) {
    struct Cached {
      uint64_t server;
      int status;
      std::string route;
      prometheus::Counter* counter;
    };
    thread_local std::vector<Cached> cache;
    for (const auto& c : cache)
      if (c.server == serial && c.status == status && c.route == route) {
        c.counter->Increment();
        return;
      }
    auto& counter = requests->Add({{"route", route}, {"code", std::to_string(status)}});
    if (cache.size() < 256) cache.push_back({serial, status, route, &counter});
    counter.Increment();
  }

  static HttpHeaders Head(const std::string& request_id, Clock::time_point received) {
    return {{"x-request-id", request_id},
            {"x-tollgate-overhead-ms", FormatMillis(Clock::now() - received)},
            {"content-type", "application/json"}};
  }

  // Answers what the server knows itself: health probes and, without a handler, 404.
  awaitable<std::string> Builtin(HttpRequest& req, ResponseWriter& writer) {
    if (req.path == "/healthz") {
      co_await writer.Send(200, Head(req.request_id, req.received), R"({"status":"ok"})");
      co_return "healthz";
    }
    if (req.path == "/readyz") {
      if (accepting) {
        co_await writer.Send(200, Head(req.request_id, req.received), R"({"status":"ready"})");
      } else {
        co_await writer.Send(503, Head(req.request_id, req.received),
                             R"({"status":"shutting down"})");
      }
      co_return "readyz";
    }
    co_await SendServerError(writer, req, ErrorCode::kNotFound,
                             "Invalid URL (" + req.method + " " + req.path + ")", nullptr);
    co_return "unknown";
  }

  // An error the server answers itself, in the dialect of the request's path (the handler's
  // RequestHandler::ServerError: Anthropic's on /v1/messages*, Azure's on /openai/...).
  static RequestHandler::ErrorReply RenderError(const RequestHandler* handler,
                                                std::string_view method, std::string_view path,
                                                ErrorCode code, std::string_view message) {
    if (handler != nullptr) return handler->ServerError(method, path, code, message);
    return {Describe(code).http, OpenAiErrorBody(code, message)};
  }

  static awaitable<void> SendServerError(ResponseWriter& writer, const HttpRequest& req,
                                         ErrorCode code, std::string_view message,
                                         const RequestHandler* handler) {
    auto reply = RenderError(handler, req.method, req.path, code, message);
    co_await writer.Send(reply.status, Head(req.request_id, req.received), std::move(reply.body));
  }

  // Reads and drops what the client still sends, for a moment and up to a bound, after our
  // answer, so the kernel does not reset the connection before the client read it.
  static awaitable<void> DrainAndClose(beast::tcp_stream& stream) {
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
    std::vector<char> sink(64 * 1024);
    size_t drained = 0;
    stream.expires_after(kDrainTime);
    while (drained < kDrainLimit) {
      size_t n = co_await stream.async_read_some(asio::buffer(sink),
                                                 asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      drained += n;
    }
  }

  // Answers a request that could not be read (too large, malformed) and closes.
  // `method` and `path` (empty when the head could not be read) choose the error's dialect.
  awaitable<void> Reject(beast::tcp_stream& stream, ErrorCode code, std::string_view message,
                         const std::string& route, const RequestHandler* handler,
                         std::string_view method, std::string_view path) {
    auto request_id = AcceptOrMakeRequestId("");
    ClientWriter writer(stream, 11, false, options.write_timeout);
    auto reply = RenderError(handler, method, path, code, message);
    const int status = reply.status;
    co_await writer.Send(status, Head(request_id, Clock::now()), std::move(reply.body));
    Count(route, status);
    co_await DrainAndClose(stream);
  }

  // Why a request could not be read, as the client is told; nullopt: close without a word
  // (the client left, or timed out). `body_limit` is the payload limit that applied.
  struct ReadFailure {
    ErrorCode code;
    std::string message;
    std::string route;
  };

  std::optional<ReadFailure> DescribeReadError(const beast::error_code& ec,
                                               uint64_t body_limit) const {
    if (ec == beast::error::timeout || ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset)
      return std::nullopt;
    if (ec == http::error::body_limit)
      return ReadFailure{
          ErrorCode::kRequestTooLarge,
          "Request body is too large (limit " + std::to_string(body_limit) + " bytes).",
          "too_large"};
    if (ec == http::error::header_limit)
      return ReadFailure{ErrorCode::kRequestTooLarge,
                         "Request headers are too large (limit " +
                             std::to_string(options.max_header_bytes) + " bytes).",
                         "too_large"};
    if (ec == kChunkMetaTooLong || ec == http::error::bad_chunk_extension)
      return ReadFailure{ErrorCode::kInvalidRequest,
                         "A chunk-size line (with its extensions) or the trailer section is "
                         "malformed or longer than " +
                             std::to_string(kMaxChunkMetaBytes) + " bytes.",
                         "malformed"};
    if (ec == http::error::bad_transfer_encoding || ec == http::error::bad_content_length)
      return ReadFailure{ErrorCode::kInvalidRequest,
                         "Invalid Content-Length or Transfer-Encoding (a request may have one "
                         "Content-Length, or Transfer-Encoding: chunked, not both).",
                         "malformed"};
    return ReadFailure{ErrorCode::kInvalidRequest, "Malformed HTTP request.", "malformed"};
  }

  // The body of a route that streams it (BodyStream in http.h), read from the session's parser
  // and buffer as the handler asks for it.
  class StreamedBody final : public BodyStream {
   public:
    StreamedBody(Impl& server, beast::tcp_stream& stream, beast::flat_buffer& buffer,
                 RequestParser& parser, size_t head_fields, bool expect_continue)
        : server_(server),
          stream_(stream),
          buffer_(buffer),
          parser_(parser),
          head_fields_(head_fields),
          expect_continue_(expect_continue),
          done_(parser.is_done()) {
      if (auto length = parser.content_length()) length_ = *length;
    }

    std::optional<uint64_t> content_length() const override { return length_; }
    bool done() const override { return done_; }
    uint64_t bytes_read() const override { return bytes_; }
    const std::optional<Failure>& failure() const override { return failure_; }

    awaitable<bool> Read(std::string& piece) override {
      piece.clear();
      if (failure_) co_return false;
      if (done_) co_return true;
      beast::error_code ec;
      if (!started_) {
        started_ = true;
        parser_.eager(true);
        if (expect_continue_) {
          stream_.expires_after(server_.options.write_timeout);
          ec = co_await SendContinue(stream_);
        }
      }
      if (!ec) {
        stream_.expires_after(server_.options.read_timeout);
        ec = co_await ReadRequest(stream_, buffer_, parser_, ReadUntil::kPiece,
                                  WireLimit(server_.options.max_upload_bytes), wire_);
      }
      if (!ec && parser_.is_done() && TrailerTooLong(parser_, head_fields_)) ec = kChunkMetaTooLong;
      if (ec) {
        auto why = server_.DescribeReadError(ec, server_.options.max_upload_bytes);
        failure_ = why ? Failure{Describe(why->code).http, why->message}
                       : Failure{0, "The client stopped sending the request body."};
        co_return false;
      }
      piece.swap(parser_.get().body());
      parser_.get().body().clear();
      bytes_ += piece.size();
      done_ = parser_.is_done();
      co_return true;
    }

   private:
    Impl& server_;
    beast::tcp_stream& stream_;
    beast::flat_buffer& buffer_;
    RequestParser& parser_;
    const size_t head_fields_;
    const bool expect_continue_;
    std::optional<uint64_t> length_;
    bool started_ = false;
    bool done_;
    uint64_t bytes_ = 0;
    uint64_t wire_ = 0;
    std::optional<Failure> failure_;
  };

  awaitable<void> Session(tcp::socket socket, RequestHandler* handler) {
    beast::error_code ec;
    const std::string peer_ip = socket.remote_endpoint(ec).address().to_string();
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    std::shared_ptr<Watch> watch;  // the requests' disconnect watch (ClientWriter)
    // Extensions are of no use to us; one longer than the metadata bound is refused.
    auto on_chunk_header = [](std::uint64_t, beast::string_view extensions,
                              beast::error_code& chunk_ec) {
      if (extensions.size() > kMaxChunkMetaBytes) chunk_ec = http::error::bad_chunk_extension;
    };
    for (;;) {
      // Idle: wait for the first byte of the next request.
      if (buffer.size() == 0) {
        stream.expires_after(options.idle_timeout);
        size_t n = co_await stream.async_read_some(buffer.prepare(4096),
                                                   asio::redirect_error(use_awaitable, ec));
        if (ec) break;  // closed, idle timeout, reset
        buffer.commit(n);
      }
      // In an optional so that a request read whole lets go of its head (the fields, ~0.7 KB)
      // before the handler runs: a held stream would keep it for its whole life.
      std::optional<RequestParser> parser_slot;
      auto& parser = parser_slot.emplace();
      parser.header_limit(options.max_header_bytes);
      // The route, known once the head is, decides which limit applies; until then the larger
      // (only the head is read), then the route's (below).
      parser.body_limit(std::max(options.max_body_bytes, options.max_upload_bytes));
      parser.on_chunk_header(on_chunk_header);
      stream.expires_after(options.read_timeout);
      uint64_t head_wire = 0;
      ec = co_await ReadRequest(stream, buffer, parser, ReadUntil::kHead, options.max_header_bytes,
                                head_wire);
      std::string framing;
      if (!ec) framing = FramingError(parser.get());
      if (!framing.empty()) {
        const std::string target(parser.get().target());
        co_await Reject(stream, ErrorCode::kInvalidRequest, framing, "malformed", handler,
                        std::string(parser.get().method_string()),
                        target.substr(0, target.find('?')));
        co_return;
      }
      HttpRequest req;
      size_t head_fields = 0;
      bool streamed = false;
      uint64_t body_limit = options.max_body_bytes;
      if (!ec) {
        // The head as handlers see it, taken before the body: trailer fields, which Beast adds
        // to the same list, never reach them.
        req.headers.reserve(
            static_cast<size_t>(std::distance(parser.get().begin(), parser.get().end())));
        for (const auto& field : parser.get()) {
          req.headers.emplace_back(Lower(field.name_string()), field.value());
          ++head_fields;
        }
        req.method = std::string(parser.get().method_string());
        req.target = std::string(parser.get().target());
        req.path = req.target.substr(0, req.target.find('?'));
        streamed = handler != nullptr && req.path != "/healthz" && req.path != "/readyz" &&
                   handler->StreamsBody(req.method, req.path);
        if (streamed) body_limit = options.max_upload_bytes;
        parser.body_limit(body_limit);
        if (auto length = parser.content_length(); length && *length > body_limit)
          ec = http::error::body_limit;
      }
      const bool expect_continue =
          !ec && beast::iequals(parser.get()[http::field::expect], "100-continue");
      if (!ec && !streamed && !parser.is_done()) {
        if (expect_continue) ec = co_await SendContinue(stream);
        if (!ec) {
          parser.eager(true);
          uint64_t wire = 0;
          ec = co_await ReadRequest(stream, buffer, parser, ReadUntil::kBody, WireLimit(body_limit),
                                    wire);
        }
        if (!ec && TrailerTooLong(parser, head_fields)) ec = kChunkMetaTooLong;
      }
      if (ec) {
        if (auto failure = DescribeReadError(ec, body_limit)) {
          // A head refused while parsed (Content-Length next to Transfer-Encoding) still has its
          // request line, which says the dialect.
          if (req.path.empty()) {
            req.method = std::string(parser.get().method_string());
            req.target = std::string(parser.get().target());
            req.path = req.target.substr(0, req.target.find('?'));
          }
          co_await Reject(stream, failure->code, failure->message, failure->route, handler,
                          req.method, req.path);
        }
        break;
      }

      ++in_flight;
      auto& msg = parser.get();
      const bool keep_alive = msg.keep_alive();
      const unsigned version = msg.version();
      std::optional<StreamedBody> body;
      if (streamed) {
        body.emplace(*this, stream, buffer, parser, head_fields, expect_continue);
        req.body_stream = &*body;
      } else {
        req.body = std::move(msg.body());
        parser_slot.reset();
      }
      req.request_id = AcceptOrMakeRequestId(req.Header("x-request-id"));
      req.client_ip = ClientIp(peer_ip, req.headers, options.trusted_proxies);
      req.received = Clock::now();

      ClientWriter writer(stream, version, keep_alive && accepting, options.write_timeout,
                          body ? &*body : nullptr, body ? nullptr : &buffer, &watch);
      std::string route;
      if (handler != nullptr && req.path != "/healthz" && req.path != "/readyz") {
        try {
          route = co_await handler->Handle(req, writer);
        } catch (const std::exception& e) {
          log::Write(log::Level::kError, "edge", "request handler failed",
                     {{"error", log::Redact(e.what())}}, req.request_id);
          route = "error";
        }
      } else {
        route = co_await Builtin(req, writer);
      }
      if (!writer.started())
        co_await SendServerError(writer, req, ErrorCode::kInternal, "Internal error.", handler);
      Count(route, writer.status());
      --in_flight;
      if (body && !body->done()) {
        // The handler answered without the rest of the body (a refusal before it was read, a
        // client that stopped sending): the connection cannot carry another request.
        if (!writer.client_gone() && !(body->failure() && body->failure()->status == 0))
          co_await DrainAndClose(stream);
        break;
      }
      if (!writer.complete() || writer.client_gone() || !keep_alive || !accepting) break;
    }
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  awaitable<void> Accept(tcp::acceptor& acceptor, RequestHandler* handler) {
    for (;;) {
      beast::error_code ec;
      tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (!accepting || ec == asio::error::operation_aborted) co_return;
        continue;  // EMFILE and friends: keep serving the connections we have
      }
      socket.set_option(tcp::no_delay(true), ec);  // each streamed event leaves at once
      asio::co_spawn(acceptor.get_executor(), Session(std::move(socket), handler), asio::detached);
    }
  }
};

HttpServer::HttpServer(HttpServerOptions options, prometheus::Registry& registry,
                       HandlerFactory handlers)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->factory = std::move(handlers);
  impl_->requests = &prometheus::BuildCounter()
                         .Name("tollgate_edge_http_requests_total")
                         .Help("HTTP requests answered by the edge, by route and status code")
                         .Register(registry);
}

HttpServer::~HttpServer() { Shutdown(std::chrono::steady_clock::now()); }

void HttpServer::Start() {
  int n = impl_->options.threads > 0
              ? impl_->options.threads
              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto endpoint = ParseEndpoint(impl_->options.listen);
  // One io_context and one SO_REUSEPORT acceptor per thread: the kernel spreads
  // connections and a connection never changes thread.
  for (int i = 0; i < n; ++i) {
    auto ctx = std::make_unique<asio::io_context>(1);
    auto acceptor = std::make_unique<tcp::acceptor>(*ctx);
    acceptor->open(endpoint.protocol());
    acceptor->set_option(asio::socket_base::reuse_address(true));
    int one = 1;
    ::setsockopt(acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    beast::error_code ec;
    acceptor->bind(endpoint, ec);
    if (ec)
      throw std::runtime_error("cannot listen on " + impl_->options.listen + ": " + ec.message());
    acceptor->listen(asio::socket_base::max_listen_connections);
    if (i == 0) {
      impl_->port = acceptor->local_endpoint().port();
      endpoint.port(static_cast<unsigned short>(impl_->port));
    }
    auto handler = impl_->factory ? impl_->factory(*ctx) : nullptr;
    asio::co_spawn(*ctx, impl_->Accept(*acceptor, handler.get()), asio::detached);
    impl_->handlers.push_back(std::move(handler));
    impl_->acceptors.push_back(std::move(acceptor));
    impl_->contexts.push_back(std::move(ctx));
  }
  for (auto& ctx : impl_->contexts) impl_->threads.emplace_back([c = ctx.get()] { c->run(); });
}

int HttpServer::port() const { return impl_->port; }

int HttpServer::in_flight() const { return impl_->in_flight.load(); }

void HttpServer::StopAccepting() {
  if (!impl_->accepting.exchange(false)) return;
  for (size_t i = 0; i < impl_->acceptors.size(); ++i)
    asio::post(*impl_->contexts[i], [a = impl_->acceptors[i].get()] {
      beast::error_code ec;
      a->close(ec);
    });
}

void HttpServer::Drain(std::chrono::steady_clock::time_point deadline) {
  if (impl_->threads.empty()) return;
  StopAccepting();
  while (impl_->in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void HttpServer::Shutdown(std::chrono::steady_clock::time_point deadline) {
  if (impl_->threads.empty()) return;
  Drain(deadline);
  for (auto& ctx : impl_->contexts) ctx->stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  // Handlers (and their upstream pools) go before the contexts their sockets belong to.
  impl_->handlers.clear();
  impl_->acceptors.clear();
  impl_->contexts.clear();
}

}  // namespace tollgate::edge
