// The OpenAI wire format as the edge needs it: request validation and rewriting, the upstream
// URL forms, the server-sent-events parser and the usage bookkeeping of a relayed response.
// Pure logic: no I/O, unit-tested in test/openai_test.cpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tollgate::edge {

enum class Endpoint { kChatCompletions, kCompletions, kEmbeddings };

// "/chat/completions", "/completions", "/embeddings": the path after the base URL.
std::string_view EndpointSuffix(Endpoint endpoint);

// A client request, parsed once. `body` is already in its upstream form except for `model`,
// which each attempt replaces (see RenderUpstreamBody).
struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  nlohmann::ordered_json body;  // ordered: the upstream sees the client's field order
  std::string model;            // as the client sent it
  bool stream = false;
  // The client's own stream_options.include_usage; upstream always gets true.
  bool client_wants_usage = false;
  int64_t prompt_estimate = 0;  // tokens, EstimateTokens(characters of the prompt)
  int64_t max_tokens = 0;       // max_tokens / max_completion_tokens, 0 when absent
};

struct RequestError {
  std::string message;
  std::string param;  // empty: null
};

std::variant<ParsedRequest, RequestError> ParseRequest(Endpoint endpoint, std::string_view body);

// The body for one attempt: every client field untouched except `model`.
std::string RenderUpstreamBody(ParsedRequest& request, std::string_view upstream_model);

// The fallback token count when an upstream reports no usage: ceil(characters / 4), counting
// Unicode code points. OpenAI's own rule of thumb for English; an estimate, flagged as such in
// the UsageRecord.
int64_t EstimateTokens(int64_t characters);
int64_t Utf8Length(std::string_view text);

struct Usage {
  bool present = false;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  // The answer's own `service_tier` (OpenAI reports the tier that served the request, in the
  // body and in every chunk); empty: not reported.
  std::string service_tier;
};

// Usage of a non-streamed response body; `completion_chars` gets the generated characters
// (for the estimate when the body has no usage).
Usage UsageFromBody(std::string_view body, int64_t* completion_chars);

// One server-sent event. `raw` is the event exactly as received, blank-line terminator
// included, so relaying it changes nothing.
struct SseEvent {
  std::string raw;
  std::string data;  // the data lines joined by '\n'
  bool has_data = false;
};

// Incremental SSE framing (WHATWG rules for line ends and data lines).
class SseParser final {
 public:
  // Appends `bytes` and moves every complete event into `out`.
  void Feed(std::string_view bytes, std::vector<SseEvent>& out);
  // Bytes of an event that has not ended yet.
  bool has_partial() const { return !buffer_.empty(); }

 private:
  std::string buffer_;
  size_t scanned_ = 0;  // bytes of buffer_ already known to hold no complete event
};

// Decides, event by event, what reaches the client of a stream and keeps the usage books.
class StreamRelay final {
 public:
  explicit StreamRelay(bool client_wants_usage) : client_wants_usage_(client_wants_usage) {}

  enum class Action { kForward, kDrop, kDone };
  // kDone for `data: [DONE]` (the caller writes the one final [DONE] itself); kDrop for the
  // usage-only chunk the client did not ask for.
  Action OnEvent(const SseEvent& event);

  const Usage& usage() const { return usage_; }
  int64_t relayed_chars() const { return relayed_chars_; }
  int64_t events_forwarded() const { return forwarded_; }

 private:
  bool client_wants_usage_;
  Usage usage_;
  int64_t relayed_chars_ = 0;
  int64_t forwarded_ = 0;
};

// A streamed answer put back together, for keys that store bodies: the deltas of each choice
// joined into one message (content, refusal, tool call arguments), so the stored response has the
// non-streamed shape and a secret split over many chunks is whole again when it is redacted.
// Bounded: text beyond `max_chars` per field is dropped and overflowed() says so.
class StreamTranscript final {
 public:
  explicit StreamTranscript(size_t max_chars) : max_chars_(max_chars) {}
  void OnData(std::string_view data);  // one event's data ("[DONE]" and non-JSON are ignored)
  // {"object":"chat.completion"|"text_completion","id","model","choices":[...],"usage"?}
  std::string Json() const;
  bool overflowed() const { return overflowed_; }

 private:
  struct ToolCall {
    std::string id, name, arguments;
  };
  struct Choice {
    std::string content, refusal, finish_reason;
    bool text_completion = false;
    std::map<int64_t, ToolCall> tool_calls;
  };
  void Append(std::string& to, std::string_view piece);

  size_t max_chars_;
  bool overflowed_ = false;
  std::string id_, model_;
  std::map<int64_t, Choice> choices_;
  std::string usage_json_;
};

enum class ProviderKind { kOpenAi, kAzureOpenAi, kOpenAiCompatible };

struct UpstreamUrl {
  bool tls = true;
  std::string host;
  uint16_t port = 443;
  std::string target;  // path and query
};

// Splits "https://host[:port]/prefix" and appends `suffix` (which may carry a query).
std::optional<UpstreamUrl> ParseUpstreamUrl(std::string_view base_url, std::string_view suffix);

// The URL path of one attempt: `{base}/chat/completions` for OpenAI and compatible servers,
// `{base}/openai/deployments/{deployment}/chat/completions?api-version=` for Azure.
std::string UpstreamSuffix(ProviderKind provider, Endpoint endpoint,
                           std::string_view upstream_model, std::string_view api_version);

std::string PercentEncode(std::string_view text);
std::string PercentDecode(std::string_view text);

}  // namespace tollgate::edge
