// What differs between upstream provider types, in one place, so the attempt loop (attempts.cpp)
// and the relay (relay.cpp) stay the same for all of them: an attempt's upstream request, how an
// answer counts for failover, and the answer as the client receives it. OpenAI, Azure OpenAI and
// OpenAI-compatible upstreams speak the client's own format (relayed as sent); Anthropic's
// Messages API is translated both ways (anthropic.h), for chat completions only.
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
}

// Why an attempt's provider cannot take the request (a 400 for the client when no attempt of the
// plan can), or nothing. Pure: it sends nothing.
std::optional<RequestError> Unsupported(const ParsedRequest& request,
                                        const UpstreamAttempt& attempt);

// The attempt's base_url is not an http(s) URL.
struct BadBaseUrl {};

// The upstream request of one attempt: URL, credential headers and body in the provider's form.
std::variant<UpstreamRequest, RequestError, BadBaseUrl> BuildUpstreamRequest(
    ParsedRequest& request, const UpstreamAttempt& attempt);

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
  const Usage& usage() const { return responses_ ? responses_->usage() : relay_.usage(); }
  int64_t relayed_chars() const {
    return responses_ ? responses_->relayed_chars() : relay_.relayed_chars();
  }
  // The Responses stream's state (nullptr for other endpoints, whose stream ends with [DONE]).
  const ResponsesStream* responses() const { return responses_.get(); }

  // An error the upstream reported inside the stream (Anthropic's `error` event); nothing after
  // it is relayed.
  struct Error {
    int status = 500;  // the status it stands for (a 503 for overloaded)
    std::string body;  // the OpenAI error object, to send as the stream's last event
  };
  std::optional<Error> error() const;

 private:
  StreamRelay relay_;
  SseParser parser_;
  std::vector<SseEvent> events_;
  std::unique_ptr<anthropic::StreamTranslator> translator_;  // set for an Anthropic upstream
  std::unique_ptr<ResponsesStream> responses_;               // set for the Responses API
};

}  // namespace tollgate::edge
