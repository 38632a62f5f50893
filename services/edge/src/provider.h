// What differs between upstream provider types, in one place, so the attempt loop (attempts.cpp)
// and the relay (relay.cpp) stay the same for all of them: an attempt's upstream request, how an
// answer counts for failover, and the answer as the client receives it. Two dimensions: the
// client's dialect (OpenAI's API, or Anthropic's Messages API in front: /v1/messages) × the
// upstream's provider type. The same dialect on both sides is relayed as sent (only `model`
// replaced); OpenAI chat → Anthropic upstream is translated by anthropic.h, Anthropic Messages →
// OpenAI-type upstream by anthropic_front.h.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "src/clients.h"
#include "src/openai.h"
#include "src/responses_format.h"
#include "src/upstream_client.h"

namespace tollgate::edge {

namespace anthropic {
class StreamTranslator;
class ChunkTranslator;
class MessagesStreamMeter;
}  // namespace anthropic

// The API the client speaks, from its endpoint.
enum class ClientDialect { kOpenAi, kAnthropic };
ClientDialect DialectOf(Endpoint endpoint);

// Why an attempt's provider cannot take the request (a 400 for the client when no attempt of the
// plan can), or nothing. Pure: it sends nothing.
std::optional<RequestError> Unsupported(const ParsedRequest& request,
                                        const UpstreamAttempt& attempt);

// The attempt's base_url is not an http(s) URL.
struct BadBaseUrl {};

// The upstream request of one attempt: URL, credential headers and body in the provider's form.
std::variant<UpstreamRequest, RequestError, BadBaseUrl> BuildUpstreamRequest(
    ParsedRequest& request, const UpstreamAttempt& attempt);

// The credential header of an attempt whose provider speaks OpenAI's own paths (OpenAI and
// OpenAI-compatible: Authorization: Bearer), for requests relayed as they are (passthrough.cpp);
// nullopt for a provider that has no such paths (Azure OpenAI: deployments; Anthropic).
std::optional<std::pair<std::string, std::string>> OpenAiPathCredential(
    const UpstreamAttempt& attempt);

// A complete upstream answer, turned into what the client receives (in place, in `body`).
struct AnswerStatus {
  int client = 0;   // the status the client receives
  int outcome = 0;  // the status the attempt counts as (an Anthropic 529 is a 503)
};
AnswerStatus AdaptWholeAnswer(const ParsedRequest& request, const UpstreamAttempt& attempt,
                              int status, std::string& body);

// A 2xx event stream as the client receives it: Feed each piece of upstream bytes and write every
// event it yields (one write each, `raw`), in order. Usage and the relayed characters are counted
// as for an OpenAI stream (StreamRelay): the usage-only chunk reaches the client only when it asked
// for it.
//
// A Responses API stream (request.endpoint kResponses) is relayed event by event with its response
// ids sealed by `seal` (ResponsesStream, responses_format.h); it has no [DONE] terminator.
class ClientStream final {
 public:
  ClientStream(const ParsedRequest& request, const UpstreamAttempt& attempt,
               SealResponseId seal = {});
  ~ClientStream();
  ClientStream(const ClientStream&) = delete;
  ClientStream& operator=(const ClientStream&) = delete;

  void Feed(std::string_view bytes, std::vector<SseEvent>& out);
  Usage usage() const;
  int64_t relayed_chars() const;
  // What ends a complete stream for the client: `data: [DONE]` for OpenAI's API (for the kinds
  // that have it, endpoint_kinds.h); for Anthropic's what is still missing of message_stop
  // (nothing when the upstream sent it).
  std::string Finish();
  // An error body (in the client's dialect) as the stream's last event.
  std::string ErrorEvent(std::string_view body) const;
  // The Responses stream's state (nullptr for other endpoints).
  const ResponsesStream* responses() const { return responses_.get(); }

  // An error the upstream reported inside the stream (an `error` event, an error chunk); nothing
  // after it is relayed.
  struct Error {
    int status = 500;   // the status it stands for (a 503 for overloaded)
    std::string event;  // the error as the stream's last event, in the client's dialect
  };
  std::optional<Error> error() const;

 private:
  ClientDialect dialect_;
  StreamRelay relay_;
  bool done_sentinel_ = true;  // the endpoint kind's stream ends with [DONE]
  SseParser parser_;
  std::vector<SseEvent> events_;
  std::unique_ptr<anthropic::StreamTranslator> translator_;  // OpenAI client, Anthropic upstream
  std::unique_ptr<anthropic::ChunkTranslator> chunks_;       // Anthropic client, OpenAI upstream
  std::unique_ptr<anthropic::MessagesStreamMeter> meter_;    // Anthropic on both sides
  std::unique_ptr<ResponsesStream> responses_;               // the Responses API
};

}  // namespace tollgate::edge
