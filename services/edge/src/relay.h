// Relaying the chosen upstream answer to the client, streamed (SSE, event by event) or whole,
// then the usage record from what was relayed (Exchange::Finish).
#pragma once

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <string>

#include "src/clients.h"
#include "src/openai.h"
#include "src/upstream_client.h"

namespace tollgate::edge {

class Exchange;
struct CancelSlot;

// A 2xx event stream: each event is written (and flushed) as it arrives; the usage-only chunk
// is dropped again unless the client asked for it. A failure now ends the stream with an error
// event (too late to fail over); a client that leaves cancels the upstream call.
boost::asio::awaitable<void> RelayStream(Exchange& x, ParsedRequest& request,
                                         const UpstreamAttempt& attempt, UpstreamCall& call,
                                         std::chrono::steady_clock::time_point t0,
                                         CancelSlot& slot);

// A 2xx binary answer (speech audio), written to the client piece by piece as it arrives, never
// buffered; a client that leaves cancels the upstream call. Not stored with the record (a note of
// its type and size is).
boost::asio::awaitable<void> RelayBytes(Exchange& x, const ParsedRequest& request,
                                        const UpstreamAttempt& attempt, UpstreamCall& call,
                                        std::chrono::steady_clock::time_point t0, CancelSlot& slot);

// A complete buffered answer, delivered as the upstream sent it: a success (usage from its
// body), or the upstream's own 4xx (`kind` kClientError) with the credential scrubbed from it.
boost::asio::awaitable<void> RelayWhole(Exchange& x, const ParsedRequest& request,
                                        const UpstreamAttempt& attempt, UpstreamCall& call,
                                        int status, OutcomeKind kind, std::string body,
                                        std::chrono::steady_clock::time_point t0);

}  // namespace tollgate::edge
