// Dispatch only: the route table (routes.cpp) picks the handler (endpoints.h), which answers
// through the request's Exchange (exchange.h).
#include "src/proxy.h"

#include <boost/asio/io_context.hpp>

#include "src/edge_metrics.h"
#include "src/exchange.h"
#include "src/routes.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;

class Proxy final : public RequestHandler {
 public:
  Proxy(asio::io_context& io, const ProxyOptions& options, EdgeClients clients,
        std::shared_ptr<EdgeMetrics> metrics, const RouteTable& routes)
      : edge_(io, options, clients, std::move(metrics)), routes_(routes) {}

  asio::awaitable<std::string> Handle(HttpRequest& request, ResponseWriter& writer) override {
    RouteMatch match = routes_.Match(request.method, request.path);
    // A path no route has is answered in the dialect its prefix says (Azure's 404 under
    // /openai/...).
    if (match.result == RouteMatch::Result::kNotFound) match.dialect = DialectOfPath(request.path);
    Exchange x(edge_, request, writer, match.dialect, std::move(match.params));
    if (match.result != RouteMatch::Result::kFound) {
      co_await x.SendNoRoute(match);
      co_return "unknown";
    }
    co_await match.route->handler(x);
    co_return match.route->label;
  }

  bool StreamsBody(std::string_view method, std::string_view path) const override {
    RouteMatch match = routes_.Match(method, path);
    return match.result == RouteMatch::Result::kFound && match.route->streams_body;
  }

  // The route's dialect (Anthropic's on /v1/messages*, Azure's on its routes), else the path's.
  ErrorReply ServerError(std::string_view method, std::string_view path, ErrorCode code,
                         std::string_view message) const override {
    RouteMatch match = routes_.Match(method, path);
    const ErrorDialect dialect =
        match.result == RouteMatch::Result::kNotFound ? DialectOfPath(path) : match.dialect;
    return {DialectErrorStatus(dialect, code), DialectErrorBody(dialect, code, message)};
  }

 private:
  EdgeContext edge_;
  const RouteTable& routes_;
};

}  // namespace

HandlerFactory MakeProxyHandlers(ProxyOptions options, EdgeClients clients,
                                 prometheus::Registry& registry) {
  auto metrics = std::make_shared<EdgeMetrics>(registry);
  const RouteTable& routes = EdgeRoutes();  // a malformed table fails here, at start-up
  return [options, clients, metrics,
          &routes](asio::io_context& io) -> std::unique_ptr<RequestHandler> {
    return std::make_unique<Proxy>(io, options, clients, metrics, routes);
  };
}

}  // namespace tollgate::edge
