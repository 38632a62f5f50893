// The edge's route table: which handler answers which method and path, under which metrics label
// and in which error format. The edge's own table is EdgeRoutes() in routes.cpp; the handlers it
// names are declared in endpoints.h, one file per endpoint family. The matcher is pure logic.
//
// A pattern is "/"-separated segments, each a literal, `{name}` (one non-empty segment) or, as
// the last segment only, `{name...}` (the non-empty rest of the path, slashes included). The path
// is matched as the client sent it (without the query), so an encoded slash ("%2F") never splits
// a segment; parameters come percent-decoded. Method "*" is any method; others compare exactly.
// The first route that matches wins. A path that some route matches, but under other methods
// only, is kMethodNotAllowed; the route's dialect decides what the client sees then (OpenAI
// answers 404 "Invalid URL" for both, so that is what the OpenAI dialect sends).
#pragma once

#include <boost/asio/awaitable.hpp>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate::edge {

class Exchange;

// The error format a route's clients expect: 404/405, authentication failures and every other
// error the edge answers on that route. kAnthropic: Anthropic's
// {"type":"error","error":{"type","message"}} (anthropic_front.h), 529 for overloaded. kAzure:
// Azure OpenAI's `{"error":{"code","message","param","type"}}`, whose `code` is Azure's
// ("DeploymentNotFound", "401", "429", "BadRequest") rather than OpenAI's (exchange.cpp renders
// it).
enum class ErrorDialect { kOpenAi, kAnthropic, kAzure };

// The dialect a path's clients speak, by its prefix alone (for a path no route has, and errors
// answered before any route is known): Anthropic's for /v1/messages and below, Azure's for
// /openai/..., else OpenAI's.
ErrorDialect DialectOfPath(std::string_view path);

using RouteHandler = boost::asio::awaitable<void> (*)(Exchange&);

struct Route {
  std::string method;   // "GET", "POST", ... or "*"
  std::string pattern;  // "/v1/models/{model...}"
  std::string label;    // the `route` label of tollgate_edge_http_requests_total
  ErrorDialect dialect = ErrorDialect::kOpenAi;
  RouteHandler handler = nullptr;
  // The handler reads the request body itself, piece by piece, as it forwards it (uploads): the
  // server reads only the head before the handler starts (so nothing but the head is read before
  // authentication), and the body's limit is edge.max_upload_bytes instead of
  // edge.max_body_bytes. See BodyStream in http.h.
  bool streams_body = false;
};

// A matched route's parameters by name, percent-decoded.
class RouteParams final {
 public:
  // The parameter's value; "" when the route has no such parameter.
  std::string_view Get(std::string_view name) const;
  void Add(std::string name, std::string value);
  bool empty() const { return values_.empty(); }

 private:
  std::vector<std::pair<std::string, std::string>> values_;
};

struct RouteMatch {
  enum class Result { kFound, kNotFound, kMethodNotAllowed };
  Result result = Result::kNotFound;
  const Route* route = nullptr;  // kFound only
  RouteParams params;            // kFound only
  // kMethodNotAllowed: the methods the path has routes for, in table order ("*" never: a "*"
  // route would have matched).
  std::vector<std::string> allowed_methods;
  // The route's; for kMethodNotAllowed the first route matching the path; for kNotFound the
  // table's fallback.
  ErrorDialect dialect = ErrorDialect::kOpenAi;
};

class RouteTable final {
 public:
  // Throws std::invalid_argument naming the route whose pattern, method or handler is malformed:
  // a table is built once, at start-up.
  explicit RouteTable(std::vector<Route> routes, ErrorDialect fallback = ErrorDialect::kOpenAi);

  RouteMatch Match(std::string_view method, std::string_view path) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  struct Segment {
    enum class Kind { kLiteral, kParam, kTail };
    Kind kind = Kind::kLiteral;
    std::string text;  // the literal, or the parameter's name
  };
  // Whether `path` has the shape of `segments`; fills `params` (raw, not yet decoded) if so.
  static bool MatchPath(const std::vector<Segment>& segments, std::string_view path,
                        std::vector<std::pair<std::string, std::string_view>>& params);

  std::vector<Route> routes_;
  std::vector<std::vector<Segment>> segments_;  // per route
  ErrorDialect fallback_;
};

// Every route the edge serves (besides the server's own /healthz and /readyz).
const RouteTable& EdgeRoutes();

}  // namespace tollgate::edge
