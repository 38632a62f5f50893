// The attempt loop (RunAttempts): the plan's upstreams in order, failing over on a connect error,
// 5xx, 429, 401/403 or a timeout, never once a byte reached the client; a client that hangs up
// cancels the current upstream call. The answer is delivered by relay.h.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "src/clients.h"
#include "src/openai.h"
#include "src/upstream_client.h"

namespace tollgate::edge {

class Exchange;

// Lets the client's disconnect reach whichever upstream call is current.
struct CancelSlot {
  bool client_gone = false;
  std::weak_ptr<UpstreamCall> current;
};

// Tries the plan's attempts (at most edge.max_attempts), relays the first deliverable answer or
// sends the last failure, and finishes the usage record.
boost::asio::awaitable<void> RunAttempts(Exchange& x, ParsedRequest& request, RouteResult& plan);

// An attempt's outcome, counted and reported to the router (its breakers and view).
void ReportAttempt(Exchange& x, const UpstreamAttempt& attempt, OutcomeKind kind, int status,
                   int64_t retry_after_ms, std::chrono::steady_clock::duration latency);
void LogAttempt(const Exchange& x, const UpstreamAttempt& attempt, OutcomeKind kind, int status,
                const std::string& detail);
// The outcome of an upstream call that ended without a complete answer.
OutcomeKind KindForFailure(UpstreamStatus status);
// What the client is told when its streamed body failed (BodyStream::Failure::status: 413, 400;
// 500 the edge could not hold it).
ErrorCode BodyFailureCode(int status);

}  // namespace tollgate::edge
