#include "src/http_server.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
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

constexpr auto kIdleTimeout = std::chrono::seconds(60);
constexpr size_t kHeaderLimit = 16 * 1024;
constexpr uint64_t kBodyLimit = 4 * 1024 * 1024;

tcp::endpoint ParseEndpoint(const std::string& listen) {
  auto colon = listen.rfind(':');
  auto host = listen.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {asio::ip::make_address(host),
          static_cast<unsigned short>(std::stoi(listen.substr(colon + 1)))};
}

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  std::vector<std::unique_ptr<asio::io_context>> contexts;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::thread> threads;
  std::atomic<bool> accepting{true};
  std::atomic<int> in_flight{0};
  int port = 0;

  http::response<http::string_body> Json(const http::request<http::string_body>& req,
                                         http::status status, std::string body) {
    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::content_type, "application/json");
    res.body() = std::move(body);
    return res;
  }

  http::response<http::string_body> Error(const http::request<http::string_body>& req,
                                          ErrorCode code, std::string_view message) {
    return Json(req, static_cast<http::status>(Describe(code).http),
                OpenAiErrorBody(code, message));
  }

  http::response<http::string_body> Handle(const http::request<http::string_body>& req,
                                           std::string& route) {
    std::string_view target(req.target().data(), req.target().size());
    std::string_view path = target.substr(0, target.find('?'));
    if (path == "/healthz") {
      route = "healthz";
      return Json(req, http::status::ok, R"({"status":"ok"})");
    }
    if (path == "/readyz") {
      route = "readyz";
      return accepting
                 ? Json(req, http::status::ok, R"({"status":"ready"})")
                 : Json(req, http::status::service_unavailable, R"({"status":"shutting down"})");
    }
    route = "unknown";
    return Error(
        req, ErrorCode::kNotFound,
        "Invalid URL (" + std::string(req.method_string()) + " " + std::string(path) + ")");
  }

  void Count(const std::string& route, unsigned status) {
    requests->Add({{"route", route}, {"code", std::to_string(status)}}).Increment();
  }

  awaitable<void> Session(tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    beast::error_code ec;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.header_limit(kHeaderLimit);
      parser.body_limit(kBodyLimit);
      stream.expires_after(kIdleTimeout);
      co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::body_limit || ec == http::error::header_limit) {
        http::request<http::string_body> dummy;
        auto res = Error(dummy, ErrorCode::kRequestTooLarge,
                         ec == http::error::body_limit ? "Request body is too large"
                                                       : "Request headers are too large");
        res.keep_alive(false);
        res.prepare_payload();
        Count("too_large", res.result_int());
        co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
        break;
      }
      if (ec) break;  // end of stream, timeout, reset
      ++in_flight;
      const auto& req = parser.get();
      std::string route;
      auto res = Handle(req, route);
      bool keep_alive = req.keep_alive() && accepting;
      res.keep_alive(keep_alive);
      res.prepare_payload();
      Count(route, res.result_int());
      co_await http::async_write(stream, res, asio::redirect_error(use_awaitable, ec));
      --in_flight;
      if (ec || !keep_alive) break;
    }
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  awaitable<void> Accept(tcp::acceptor& acceptor) {
    for (;;) {
      beast::error_code ec;
      tcp::socket socket = co_await acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (!accepting || ec == asio::error::operation_aborted) co_return;
        continue;  // EMFILE and friends: keep serving the connections we have
      }
      socket.set_option(tcp::no_delay(true), ec);
      asio::co_spawn(acceptor.get_executor(), Session(std::move(socket)), asio::detached);
    }
  }
};

HttpServer::HttpServer(HttpServerOptions options, prometheus::Registry& registry)
    : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
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
    asio::co_spawn(*ctx, impl_->Accept(*acceptor), asio::detached);
    impl_->acceptors.push_back(std::move(acceptor));
    impl_->contexts.push_back(std::move(ctx));
  }
  for (auto& ctx : impl_->contexts) impl_->threads.emplace_back([c = ctx.get()] { c->run(); });
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::StopAccepting() {
  if (!impl_->accepting.exchange(false)) return;
  for (size_t i = 0; i < impl_->acceptors.size(); ++i)
    asio::post(*impl_->contexts[i], [a = impl_->acceptors[i].get()] {
      beast::error_code ec;
      a->close(ec);
    });
}

void HttpServer::Shutdown(std::chrono::steady_clock::time_point deadline) {
  if (impl_->threads.empty()) return;
  StopAccepting();
  while (impl_->in_flight.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (auto& ctx : impl_->contexts) ctx->stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->acceptors.clear();
  impl_->contexts.clear();
}

}  // namespace tollgate::edge
