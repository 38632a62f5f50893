#include "src/upstream_client.h"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <array>
#include <cerrno>
#include <charconv>
#include <limits>
#include <stdexcept>
#include <unordered_map>

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

constexpr size_t kResponseHeaderLimit = 64 * 1024;
// Body bytes per read: the first read of a call asks for kFirstReadChunk (a streamed event is a
// few hundred bytes, and every held stream keeps its buffer), and a read that fills the buffer
// doubles it up to kReadChunk (a large answer).
constexpr size_t kFirstReadChunk = 2 * 1024;
constexpr size_t kReadChunk = 16 * 1024;
constexpr std::string_view kUserAgent = "tollgate/0.1";

struct Connection {
  std::string key;
  std::unique_ptr<beast::tcp_stream> plain;
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  Clock::time_point idle_since;

  beast::tcp_stream& lowest() { return tls ? beast::get_lowest_layer(*tls) : *plain; }

  void Close() {
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close();
  }

  // An idle keep-alive connection the server has closed (or sent garbage on) is not reused.
  bool Stale() {
    auto& socket = lowest().socket();
    if (!socket.is_open()) return true;
    char c;
    ssize_t n = ::recv(socket.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;  // FIN
    if (n < 0) return errno != EAGAIN && errno != EWOULDBLOCK;
    // Bytes on an idle connection: garbage for plain HTTP; for TLS possibly a session ticket.
    return !tls;
  }
};

// Runs `f` with whichever stream the connection has; `f` returns the same awaitable for both.
template <typename F>
auto WithStream(Connection& c, F&& f) {
  if (c.tls) return f(*c.tls);
  return f(*c.plain);
}

// Built in place (one allocation; the concatenation made a temporary per step): once a call.
std::string PoolKey(const UpstreamUrl& url) {
  std::string key;
  key.reserve(url.host.size() + 15);
  key += url.tls ? "https://" : "http://";
  key += url.host;
  key += ':';
  char port[8];
  key.append(port,
             static_cast<size_t>(std::to_chars(port, port + sizeof port, url.port).ptr - port));
  return key;
}

bool IsIpLiteral(const std::string& host) {
  beast::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

bool IsPeerGone(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::error::connection_aborted || ec == ssl::error::stream_truncated;
}

}  // namespace

const char* UpstreamStatusName(UpstreamStatus status) {
  switch (status) {
    case UpstreamStatus::kOk:
      return "ok";
    case UpstreamStatus::kConnectError:
      return "connect_error";
    case UpstreamStatus::kTimeout:
      return "timeout";
    case UpstreamStatus::kBroken:
      return "broken";
    case UpstreamStatus::kCancelled:
      return "cancelled";
    case UpstreamStatus::kClientBodyFailed:
      return "client_body_failed";
  }
  return "unknown";
}

struct UpstreamPool::Shared {
  Shared(asio::io_context& io_context, UpstreamPoolOptions opts)
      : io(io_context), options(std::move(opts)), tls(ssl::context::tls_client) {
    tls.set_default_verify_paths();
    if (!options.ca_file.empty()) {
      beast::error_code ec;
      tls.load_verify_file(options.ca_file, ec);
      if (ec)
        throw std::runtime_error("cannot load upstream CA file '" + options.ca_file +
                                 "': " + ec.message());
    }
    tls.set_verify_mode(ssl::verify_peer);
    SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
  }

  // `check`: peek at a connection idle for less than check_idle_after too (a request that
  // could not be sent again on a fresh connection once it found this one closed).
  std::unique_ptr<Connection> Take(const std::string& key, bool check) {
    auto it = idle.find(key);
    if (it == idle.end()) return nullptr;
    auto& list = it->second;
    auto now = Clock::now();
    while (!list.empty()) {
      auto conn = std::move(list.back());  // most recently used first: the warmest
      list.pop_back();
      --idle_count;
      const auto idle_for = now - conn->idle_since;
      if (idle_for < options.keepalive &&
          ((!check && idle_for < options.check_idle_after) || !conn->Stale()))
        return conn;
      conn->Close();
    }
    return nullptr;
  }

  void Give(std::unique_ptr<Connection> conn) {
    auto& list = idle[conn->key];
    auto now = Clock::now();
    // Drop the expired ones at the cold end while we are here.
    while (!list.empty() && now - list.front()->idle_since >= options.keepalive) {
      list.front()->Close();
      list.erase(list.begin());
      --idle_count;
    }
    if (list.size() >= options.max_idle_per_host) {
      conn->Close();
      return;
    }
    conn->idle_since = now;
    list.push_back(std::move(conn));
    ++idle_count;
  }

  asio::io_context& io;
  UpstreamPoolOptions options;
  ssl::context tls;
  std::unordered_map<std::string, std::vector<std::unique_ptr<Connection>>> idle;
  size_t idle_count = 0;
};

struct UpstreamCall::Impl {
  std::weak_ptr<UpstreamPool::Shared> pool;
  asio::io_context& io;
  UpstreamRequest request;
  UpstreamTimeouts timeouts;
  size_t max_buffered_body;
  std::string key;
  std::unique_ptr<Connection> conn;
  std::optional<http::response_parser<http::buffer_body>> parser;
  Clock::time_point deadline;
  bool cancelled = false;
  bool finished = false;
  bool sent = false;  // the whole request reached the socket: the provider may be working on it
  std::string error;
  std::unique_ptr<char[]> buffer;  // body bytes of one Read (kFirstReadChunk..kReadChunk)
  size_t buffer_size = 0;

  awaitable<UpstreamStatus> ReadInto(char* data, size_t size, size_t& n);

  Impl(std::weak_ptr<UpstreamPool::Shared> p, asio::io_context& i, UpstreamRequest r,
       UpstreamTimeouts t, size_t max_body)
      : pool(std::move(p)),
        io(i),
        request(std::move(r)),
        timeouts(t),
        max_buffered_body(max_body),
        key(PoolKey(request.url)) {}

  Clock::time_point Until(std::chrono::milliseconds timeout) const {
    return std::min(Clock::now() + timeout, deadline);
  }

  UpstreamStatus Fail(UpstreamStatus status, std::string what, const beast::error_code& ec) {
    if (cancelled) return UpstreamStatus::kCancelled;
    error = what + (ec ? ": " + ec.message() : "");
    if (conn) conn->Close();
    return ec == beast::error::timeout ? UpstreamStatus::kTimeout : status;
  }

  awaitable<UpstreamStatus> Connect(const std::shared_ptr<UpstreamPool::Shared>& shared) {
    const auto& url = request.url;
    auto connect_deadline = Until(timeouts.connect);
    // The resolver has no expiry of its own: a timer cancels it. Both are shared with the
    // timer's handler, which may run after this frame is gone.
    auto resolver = std::make_shared<tcp::resolver>(io);
    auto timer = std::make_shared<asio::steady_timer>(io, connect_deadline);
    auto resolve_timed_out = std::make_shared<bool>(false);
    timer->async_wait([resolver, resolve_timed_out](const beast::error_code& ec) {
      if (ec) return;
      *resolve_timed_out = true;
      resolver->cancel();
    });
    beast::error_code ec;
    auto endpoints = co_await resolver->async_resolve(url.host, std::to_string(url.port),
                                                      asio::redirect_error(use_awaitable, ec));
    timer->cancel();
    if (cancelled) co_return UpstreamStatus::kCancelled;
    if (*resolve_timed_out) co_return Fail(UpstreamStatus::kTimeout, "resolve timed out", {});
    if (ec) co_return Fail(UpstreamStatus::kConnectError, "resolve " + url.host, ec);

    conn = std::make_unique<Connection>();
    conn->key = key;
    if (url.tls) {
      conn->tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(io, shared->tls);
    } else {
      conn->plain = std::make_unique<beast::tcp_stream>(io);
    }
    auto& lowest = conn->lowest();
    lowest.expires_at(connect_deadline);
    co_await lowest.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
    if (ec || cancelled) {
      if (ec == beast::error::timeout && !cancelled) {
        error = "connect timed out";
        conn->Close();
        co_return UpstreamStatus::kTimeout;
      }
      co_return Fail(UpstreamStatus::kConnectError, "connect " + key, ec);
    }
    lowest.socket().set_option(tcp::no_delay(true), ec);
    if (conn->tls) {
      auto* native = conn->tls->native_handle();
      if (!IsIpLiteral(url.host)) SSL_set_tlsext_host_name(native, url.host.c_str());  // SNI
      conn->tls->set_verify_mode(ssl::verify_peer);
      conn->tls->set_verify_callback(ssl::host_name_verification(url.host));
      co_await conn->tls->async_handshake(ssl::stream_base::client,
                                          asio::redirect_error(use_awaitable, ec));
      if (ec || cancelled) {
        if (ec == beast::error::timeout && !cancelled) {
          error = "TLS handshake timed out";
          conn->Close();
          co_return UpstreamStatus::kTimeout;
        }
        co_return Fail(UpstreamStatus::kConnectError, "TLS handshake with " + key, ec);
      }
    }
    co_return UpstreamStatus::kOk;
  }

  // The request head's fields, on a request of any body type.
  template <class Message>
  void SetHead(Message& req) const {
    req.method(http::string_to_verb(request.method));
    req.target(request.url.target);
    req.version(11);
    const auto& url = request.url;
    std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
    if (url.port != (url.tls ? 443 : 80)) host += ":" + std::to_string(url.port);
    req.set(http::field::host, host);
    req.set(http::field::user_agent, kUserAgent);
    req.set(http::field::accept_encoding, "identity");
    for (const auto& [name, value] : request.headers) req.set(name, value);
    req.keep_alive(true);
  }

  // Sends the head, then the body as it is read from request.body_stream: each piece written
  // before the next is read. nullopt when a reused connection turned out closed before any of
  // the body was read (so the request can go on a fresh one).
  awaitable<std::optional<UpstreamStatus>> SendStreamed(bool reused) {
    BodyStream& source = *request.body_stream;
    http::request<http::empty_body> req;
    SetHead(req);
    const std::optional<uint64_t> length = source.content_length();
    if (length) {
      req.content_length(*length);
    } else {
      req.chunked(true);
    }
    http::request_serializer<http::empty_body> serializer{req};
    beast::error_code ec;
    conn->lowest().expires_at(Until(timeouts.idle));
    co_await WithStream(*conn, [&](auto& stream) {
      return http::async_write_header(stream, serializer, asio::redirect_error(use_awaitable, ec));
    });
    if (cancelled) co_return UpstreamStatus::kCancelled;
    if (ec && reused && IsPeerGone(ec) && source.bytes_read() == 0) co_return std::nullopt;
    if (ec) co_return Fail(UpstreamStatus::kConnectError, "send to " + key, ec);
    std::string piece;
    for (;;) {
      if (!co_await source.Read(piece)) {
        if (cancelled) co_return UpstreamStatus::kCancelled;
        error = "the client's request body did not arrive";
        conn->Close();
        co_return UpstreamStatus::kClientBodyFailed;
      }
      if (cancelled) co_return UpstreamStatus::kCancelled;
      if (piece.empty() && !source.done()) continue;
      conn->lowest().expires_at(Until(timeouts.idle));
      if (!piece.empty()) {
        co_await WithStream(*conn, [&](auto& stream) {
          asio::const_buffer data(piece.data(), piece.size());
          if (length)
            return asio::async_write(stream, data, asio::redirect_error(use_awaitable, ec));
          return asio::async_write(stream, http::make_chunk(data),
                                   asio::redirect_error(use_awaitable, ec));
        });
        if (cancelled) co_return UpstreamStatus::kCancelled;
        if (ec) co_return Fail(UpstreamStatus::kBroken, "send the body to " + key, ec);
      }
      if (source.done()) break;
    }
    if (!length) {
      co_await WithStream(*conn, [&](auto& stream) {
        return asio::async_write(stream, http::make_chunk_last(),
                                 asio::redirect_error(use_awaitable, ec));
      });
      if (cancelled) co_return UpstreamStatus::kCancelled;
      if (ec) co_return Fail(UpstreamStatus::kBroken, "send the body to " + key, ec);
    }
    sent = true;
    co_return UpstreamStatus::kOk;
  }

  // kOk, an error, or nullopt when a reused connection turned out closed before answering.
  awaitable<std::optional<UpstreamStatus>> Exchange(bool reused) {
    beast::error_code ec;
    if (request.body_stream != nullptr) {
      auto written = co_await SendStreamed(reused);
      if (!written || *written != UpstreamStatus::kOk) co_return written;
      // Once the body went, the request cannot be sent again: no retry below.
      reused = false;
    } else {
      // The body is written from the request's own string (kept for a second try on a fresh
      // connection), not copied.
      http::request<http::span_body<const char>> req;
      SetHead(req);
      req.body() = {request.body.data(), request.body.size()};
      req.prepare_payload();
      conn->lowest().expires_at(Until(timeouts.first_byte));
      co_await WithStream(*conn, [&](auto& stream) {
        return http::async_write(stream, req, asio::redirect_error(use_awaitable, ec));
      });
      if (!ec) sent = true;
      if (cancelled) co_return UpstreamStatus::kCancelled;
      if (ec && reused && IsPeerGone(ec)) co_return std::nullopt;
      if (ec) co_return Fail(UpstreamStatus::kConnectError, "send to " + key, ec);
    }
    conn->lowest().expires_at(Until(timeouts.first_byte));

    parser.emplace();
    parser->header_limit(kResponseHeaderLimit);
    // Bodies are streamed; ReadAll bounds what it buffers. Not boost::none: Beast 1.74 compares
    // a Content-Length against an empty limit as "over the limit".
    parser->body_limit(std::numeric_limits<std::uint64_t>::max());
    if (request.method == "HEAD") parser->skip(true);
    co_await WithStream(*conn, [&](auto& stream) {
      return http::async_read_header(stream, conn->buffer, *parser,
                                     asio::redirect_error(use_awaitable, ec));
    });
    if (cancelled) co_return UpstreamStatus::kCancelled;
    if (ec && reused && IsPeerGone(ec) && !parser->got_some()) co_return std::nullopt;
    if (ec == beast::error::timeout) {
      error = "no response head in time";
      conn->Close();
      co_return UpstreamStatus::kTimeout;
    }
    if (ec && !parser->got_some()) co_return Fail(UpstreamStatus::kConnectError, key, ec);
    if (ec) co_return Fail(UpstreamStatus::kBroken, "bad response head from " + key, ec);
    if (parser->is_done()) finished = true;
    co_return UpstreamStatus::kOk;
  }

  void Release() {
    if (!conn) return;
    auto shared = pool.lock();
    if (shared && finished && !cancelled && parser && parser->is_done() && parser->keep_alive() &&
        conn->buffer.size() == 0) {
      shared->Give(std::move(conn));
    } else {
      conn->Close();
      conn.reset();
    }
  }
};

UpstreamCall::UpstreamCall(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UpstreamCall::~UpstreamCall() { impl_->Release(); }

awaitable<UpstreamStatus> UpstreamCall::Start() {
  auto& d = *impl_;
  d.deadline = Clock::now() + d.timeouts.total;
  for (int round = 0; round < 2; ++round) {
    auto shared = d.pool.lock();
    if (!shared) co_return d.Fail(UpstreamStatus::kConnectError, "shutting down", {});
    // A streamed body is sent again only while none of it was read, which a closed connection
    // found after the head went would spoil: such a request always checks first.
    d.conn = round == 0 ? shared->Take(d.key, d.request.body_stream != nullptr) : nullptr;
    bool reused = d.conn != nullptr;
    if (!reused) {
      auto status = co_await d.Connect(shared);
      if (status != UpstreamStatus::kOk) co_return status;
    }
    auto status = co_await d.Exchange(reused);
    if (status) {
      // Sent (or failed for good): the rendered body and headers are not needed again, and a
      // stream would otherwise hold them for as long as it lasts.
      std::string().swap(d.request.body);
      decltype(d.request.headers)().swap(d.request.headers);
      co_return *status;
    }
    // The server had closed the idle connection: once more on a fresh one. What was written
    // to the closed one reached nobody.
    d.conn->Close();
    d.conn.reset();
    d.sent = false;
  }
  co_return d.Fail(UpstreamStatus::kConnectError, "connection closed before an answer", {});
}

bool UpstreamCall::request_sent() const { return impl_->sent; }

int UpstreamCall::status() const { return impl_->parser ? impl_->parser->get().result_int() : 0; }

std::string UpstreamCall::Header(std::string_view name) const {
  if (!impl_->parser) return {};
  const auto& head = impl_->parser->get();
  auto it = head.find(name);
  return it == head.end() ? std::string() : std::string(it->value());
}

// One read of body bytes into [data, data + size): how many arrived, in `n`. kOk with
// `finished` set at the end of the body.
awaitable<UpstreamStatus> UpstreamCall::Impl::ReadInto(char* data, size_t size, size_t& n) {
  n = 0;
  auto& body = parser->get().body();
  body.data = data;
  body.size = size;
  beast::error_code ec;
  conn->lowest().expires_at(Until(timeouts.idle));
  co_await WithStream(*conn, [&](auto& stream) {
    return http::async_read_some(stream, conn->buffer, *parser,
                                 asio::redirect_error(use_awaitable, ec));
  });
  if (cancelled) co_return UpstreamStatus::kCancelled;
  if (ec == http::error::need_buffer) ec = {};
  n = size - parser->get().body().size;
  if (ec == beast::error::timeout) {
    error = "no body data in time";
    conn->Close();
    co_return UpstreamStatus::kTimeout;
  }
  if (ec) co_return Fail(UpstreamStatus::kBroken, "body cut off", ec);
  if (parser->is_done()) finished = true;
  co_return UpstreamStatus::kOk;
}

awaitable<UpstreamStatus> UpstreamCall::Read(std::string& out) {
  auto& d = *impl_;
  if (d.cancelled) co_return UpstreamStatus::kCancelled;
  if (d.finished || !d.conn) co_return UpstreamStatus::kOk;
  if (!d.buffer) {
    d.buffer_size = kFirstReadChunk;
    d.buffer.reset(new char[d.buffer_size]);  // not value-initialized: no page touched for nothing
  }
  for (;;) {
    size_t n = 0;
    auto status = co_await d.ReadInto(d.buffer.get(), d.buffer_size, n);
    out.append(d.buffer.get(), n);
    if (status != UpstreamStatus::kOk || d.finished || n > 0) {
      if (n == d.buffer_size && d.buffer_size < kReadChunk) {  // more is coming at once
        d.buffer_size = std::min(d.buffer_size * 2, kReadChunk);
        d.buffer.reset(new char[d.buffer_size]);
      }
      co_return status;
    }
  }
}

// Straight into `out`, sized by the Content-Length when there is one: a whole answer needs no
// read buffer of the call's own and no copy out of it.
awaitable<UpstreamStatus> UpstreamCall::ReadAll(std::string& out) {
  auto& d = *impl_;
  if (d.cancelled) co_return UpstreamStatus::kCancelled;
  size_t chunk = kFirstReadChunk;
  while (!d.finished && d.conn) {
    size_t room = chunk;
    if (auto left = d.parser->content_length_remaining())
      room = static_cast<size_t>(std::min<uint64_t>(*left, 4 * kReadChunk));  // not all at once
    room = std::max<size_t>(room, 1);
    const size_t old = out.size();
    out.resize(old + room);
    size_t n = 0;
    auto status = co_await d.ReadInto(out.data() + old, room, n);
    out.resize(old + n);
    if (status != UpstreamStatus::kOk) co_return status;
    if (out.size() > d.max_buffered_body) {
      d.error = "response body over the buffering limit";
      d.conn->Close();
      co_return UpstreamStatus::kBroken;
    }
    if (n == room) chunk = std::min(chunk * 2, kReadChunk);
  }
  co_return UpstreamStatus::kOk;
}

bool UpstreamCall::finished() const { return impl_->finished; }

void UpstreamCall::Cancel() {
  auto& d = *impl_;
  if (d.cancelled) return;
  d.cancelled = true;
  if (d.conn) d.conn->Close();
}

const std::string& UpstreamCall::error_detail() const { return impl_->error; }

UpstreamPool::UpstreamPool(asio::io_context& io, UpstreamPoolOptions options)
    : shared_(std::make_shared<Shared>(io, std::move(options))) {}

UpstreamPool::~UpstreamPool() {
  for (auto& [key, list] : shared_->idle)
    for (auto& conn : list) conn->Close();
}

std::unique_ptr<UpstreamCall> UpstreamPool::NewCall(UpstreamRequest request,
                                                    UpstreamTimeouts timeouts) {
  return std::unique_ptr<UpstreamCall>(new UpstreamCall(std::make_unique<UpstreamCall::Impl>(
      shared_, shared_->io, std::move(request), timeouts, shared_->options.max_buffered_body)));
}

size_t UpstreamPool::idle_connections() const { return shared_->idle_count; }

}  // namespace tollgate::edge
