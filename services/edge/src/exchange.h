// One request as its handler sees it (Exchange): the request, the response writer, the route's
// parameters and error dialect, the usage record being built; and what every request on one I/O
// thread shares (EdgeContext). Sending, authenticating and finishing the record happen here once,
// for every endpoint.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "src/clients.h"
#include "src/field_policy.h"
#include "src/http.h"
#include "src/openai.h"
#include "src/proxy.h"
#include "src/routes.h"
#include "src/upstream_client.h"

namespace boost::asio {
class io_context;
}

namespace tollgate::edge {

class EdgeMetrics;

// Built once per io_context (MakeProxyHandlers), so nothing in it needs a lock.
struct EdgeContext {
  EdgeContext(boost::asio::io_context& io, const ProxyOptions& options, EdgeClients clients,
              std::shared_ptr<EdgeMetrics> metrics);

  const ProxyOptions options;
  const FieldPolicy field_policy;
  EdgeClients clients;
  std::shared_ptr<EdgeMetrics> metrics;  // shared by every thread (thread-safe)
  UpstreamPool pool;                     // this thread's keep-alive connections
};

// Not an HTTP status anyone sends: nginx's "client closed request", for records and metrics.
constexpr int kClientClosedRequest = 499;

class Exchange final {
 public:
  using Clock = std::chrono::steady_clock;

  Exchange(EdgeContext& edge, HttpRequest& request, ResponseWriter& writer, ErrorDialect dialect,
           RouteParams params);

  // The caller, once authentication succeeded; otherwise the refusal has been sent (in the
  // route's dialect) and the handler just returns.
  boost::asio::awaitable<std::optional<Principal>> Authenticate();

  // x-request-id, x-tollgate-overhead-ms (the first call observes the overhead metric) and, once
  // the quota service answered, x-ratelimit-*.
  HttpHeaders CommonHeaders();
  // An error body in the route's dialect, and the status it goes with.
  std::string ErrorBody(ErrorCode code, std::string_view message,
                        std::string_view param = {}) const;
  int ErrorStatus(ErrorCode code) const;
  boost::asio::awaitable<void> SendError(ErrorCode code, std::string_view message,
                                         std::string_view param = {}, HttpHeaders extra = {});
  // A service's refusal: retry-after when it gave one; a model_not_found names param "model".
  boost::asio::awaitable<void> SendDenied(const Failure& denied);
  // 200 with a JSON body.
  boost::asio::awaitable<void> SendJson(std::string body);
  // No route for the request (RouteTable::Match found none, or none for its method).
  boost::asio::awaitable<void> SendNoRoute(const RouteMatch& match);

  // Appends what the client received to the body capture (keys with store_bodies), up to
  // edge.store_bodies_max_bytes (+ a margin, so a secret cut at the bound is still recognised
  // and redacted before the final cut).
  void Capture(std::string_view bytes);
  // The usage record goes out: quota settles (or releases) it, billing records it.
  void Finish(int status);

  EdgeContext& edge;
  HttpRequest& request;
  ResponseWriter& writer;
  const ErrorDialect dialect;
  const RouteParams params;

  // The clock for x-tollgate-overhead-ms and the usage record.
  Clock::time_point start;
  Clock::duration upstream_wait{0};  // connect + waiting for upstream answers
  bool overhead_observed = false;
  UsageRecord record;
  HttpHeaders rate_limit_headers;  // x-ratelimit-*, once the quota service answered
  // The key opted in to storing bodies: what the client got is kept (up to a bound) and goes,
  // redacted, with the usage record (Finish). `answering_key` is redacted from it too.
  bool keep_bodies = false;
  std::string response_capture;
  bool response_overflow = false;
  std::string answering_key;
  std::optional<StreamTranscript> transcript;  // a streamed answer, put back together
  // The request body is a binary upload (multipart audio or images): stored as a note only.
  bool binary_request = false;

 private:
  void StoreBodies();
};

// An error body in `dialect`'s format (Exchange::ErrorBody's), and the status it goes with.
std::string DialectErrorBody(ErrorDialect dialect, ErrorCode code, std::string_view message,
                             std::string_view param = {});
int DialectErrorStatus(ErrorDialect dialect, ErrorCode code);

// The API key the request presents: Authorization: Bearer, else api-key (Azure's form), else
// x-api-key (Anthropic's).
std::string_view ApiKey(const HttpRequest& request);

}  // namespace tollgate::edge
