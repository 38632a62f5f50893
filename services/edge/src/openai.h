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

// Every inference endpoint; what each bills by and how its usage is read is one table,
// endpoint_kinds.h. kMessages and kCountTokens are Anthropic's Messages API in front
// (anthropic_front.h): their bodies are Anthropic's, parsed by ParseMessagesRequest.
enum class Endpoint {
  kChatCompletions,
  kCompletions,
  kEmbeddings,
  kImagesGenerations,
  kImagesEdits,
  kImagesVariations,
  kAudioSpeech,
  kAudioTranscriptions,
  kAudioTranslations,
  kModerations,
  kMessages,
  kCountTokens,
  kResponses,
};

// "/chat/completions", "/completions", "/embeddings", ... "/responses" ("/v1/messages",
// "/v1/messages/count_tokens"): the path after the base URL (endpoint_kinds.h has the table).
std::string_view EndpointSuffix(Endpoint endpoint);

// A client request, parsed once. `body` is already in its upstream form except for `model`,
// which each attempt replaces (see RenderUpstreamBody; the client's own bytes go when nothing
// else changed, ParsedRequest::source).
struct RequestError {
  std::string message;
  std::string param;  // empty: null
};

// The deepest nesting of arrays and objects a request body may have (400 beyond). Checked on the
// raw bytes before anything parses or walks the document, so no code ever recurses over more
// levels than this (nlohmann's serialiser, for one, is recursive).
inline constexpr int kMaxJsonDepth = 64;

// Whether the JSON text nests arrays/objects at most `max_depth` deep (strings are skipped, so
// brackets inside them do not count). Linear, no recursion; says nothing about validity.
bool JsonDepthWithin(std::string_view text, int max_depth);

// Token estimates for admission (quota) and holds (billing): an upper bound of what the upstream
// will count, never a guess that can be low.
// - The prompt: every byte of the body counts (messages, tools, tool call arguments, any other
//   field), at kPromptBytesPerToken bytes per token: a tokenizer's token covers at least a few
//   bytes of JSON text in any script (English averages four characters; CJK one token per
//   three-byte character at most), so this bounds what the provider counts. Inline image data
//   (data: URLs of image parts) is not counted by bytes; each image part counts kImageTokens.
// - The completion: the effective max_tokens (the client's, else the model's default, which the
//   edge then sends upstream itself) times the choices generated (`n`, or `best_of`).
inline constexpr int64_t kPromptBytesPerToken = 3;
inline constexpr int64_t kImageTokens = 2000;
// No model generates more; a larger max_tokens is refused (with no model limit configured).
inline constexpr int64_t kMaxCompletionTokens = 1'000'000;

// The prompt's upper bound above for a body of `body_bytes` with `images` image parts whose
// inline data takes `image_data_bytes` of it.
int64_t PromptUpperBound(int64_t body_bytes, int64_t images, int64_t image_data_bytes);

class BodyStream;

// A request body the client streams (a multipart audio upload, upload.h) instead of one the edge
// holds: each attempt reads its own BodyStream of it, with the model it sends.
class RequestUpload {
 public:
  virtual ~RequestUpload() = default;
  // Whether an attempt can (still) send the whole body: false once an earlier attempt read part
  // of it from the client that the edge does not hold.
  virtual bool Replayable() const = 0;
  // The body for one attempt, the model's value replaced by `model`; owned by the upload.
  virtual BodyStream* Open(std::string_view model) = 0;
};

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  nlohmann::ordered_json body;  // ordered: the upstream sees the client's field order
  std::string model;            // as the client sent it
  // The client's JSON bytes, kept by ParseRequest while `body` says exactly what they say apart
  // from `model` (no repeated key, `model` a string under its plain key, nothing added or
  // changed): RenderUpstreamBody then sends them with only the model's JSON string
  // [source_model_at, source_model_at + source_model_len) replaced, instead of rendering the
  // tree. Whatever changes `body` after parsing calls BodyChanged(), so the tree is rendered.
  std::string source;
  size_t source_model_at = 0;
  size_t source_model_len = 0;
  void BodyChanged() { std::string().swap(source); }
  bool stream = false;
  // The client's own stream_options.include_usage; upstream always gets true.
  bool client_wants_usage = false;
  int64_t prompt_estimate = 0;  // tokens: the whole-body upper bound (see kPromptBytesPerToken)
  // The client's max_tokens / max_completion_tokens (the larger when both; the Responses API's
  // max_output_tokens), 0 when absent; after
  // ApplyCompletionBudget the budget every estimate uses.
  int64_t max_tokens = 0;
  std::string max_tokens_param = "max_tokens";  // the field the client used, for errors
  // Set by ApplyCompletionBudget when the client sent no limit: RenderUpstreamBody then sends
  // the budget upstream (max_completion_tokens to OpenAI and Azure chat, max_output_tokens to the
  // Responses API, max_tokens otherwise),
  // so the answer can never outgrow what was admitted and held.
  bool send_max_tokens = false;
  int64_t choices = 1;  // max(n, best_of): completions generated per request
  // Client headers an upstream of the client's own dialect gets as sent (Anthropic's
  // anthropic-version and anthropic-beta).
  std::vector<std::pair<std::string, std::string>> forward_headers;

  // A body relayed as the client sent it (multipart/form-data: images edits and variations,
  // audio transcriptions and translations), with its content type; empty for JSON bodies. Only
  // the model's value changes per attempt: [model_at, model_at + model_len) of raw_body, or a
  // model part inserted at model_at when the client sent none (model_len 0, model_missing).
  std::string raw_body;
  std::string content_type;
  size_t model_at = 0;
  size_t model_len = 0;
  bool model_missing = false;
  std::string multipart_boundary;
  // Set instead of raw_body when the multipart body is streamed from the client (its
  // content_type as above); the handler owns it.
  RequestUpload* upload = nullptr;
  // Units beyond tokens (endpoint_kinds.h): what the request may use at most.
  int64_t images = 0;             // images asked for (n)
  std::string image_size;         // as asked ("" when not given)
  std::string image_quality;      // as asked
  int64_t audio_ms = 0;           // audio duration bound: measured from a WAV header, else a bound
  int64_t audio_ms_estimate = 0;  // what a record without a reported duration is charged
  bool audio_ms_measured = false;
  int64_t characters = 0;  // text to speech: the input's characters
};

// A model's completion limits from the catalogue; 0: not configured.
struct ModelLimits {
  int64_t max_output_tokens = 0;   // a larger max_tokens is a 400
  int64_t default_max_tokens = 0;  // the budget of a request that sets none
};

// Decides the completion budget once the model is known: the client's limit (refused above the
// model's max_output_tokens, or kMaxCompletionTokens), else the model's default, else
// `fallback_default` (then also capped by max_output_tokens). Embeddings and count_tokens have
// none.
std::optional<RequestError> ApplyCompletionBudget(ParsedRequest& request, const ModelLimits& limits,
                                                  int64_t fallback_default);

// prompt estimate + budget x choices, saturating: the tokens a request may cost at most.
int64_t WorstCaseTokens(const ParsedRequest& request);
int64_t WorstCaseCompletionTokens(const ParsedRequest& request);

// `model`, when not empty, is the model the route names (Azure's deployment): it replaces the
// body's own `model`, which may then be absent.
// Parses a request body that must be a JSON object, nested at most kMaxJsonDepth deep (checked
// before parsing); the error names `api` ("OpenAI API") as the one expecting the object.
std::optional<RequestError> ParseJsonObject(std::string_view body, nlohmann::ordered_json& out,
                                            std::string_view api = "OpenAI API");

std::variant<ParsedRequest, RequestError> ParseRequest(Endpoint endpoint, std::string_view body,
                                                       std::string_view model = {});

enum class ProviderKind { kOpenAi, kAzureOpenAi, kOpenAiCompatible, kAnthropic };

// The body for one attempt: every client field untouched except `model` (and the completion
// budget when the edge decided it, in the field the provider knows). With `source` kept and no
// budget to send, the client's bytes with the model's value spliced in; else `body` rendered.
std::string RenderUpstreamBody(ParsedRequest& request, std::string_view upstream_model,
                               ProviderKind provider = ProviderKind::kOpenAi);

// The fallback token count when an upstream reports no usage: ceil(characters / 4), counting
// Unicode code points. OpenAI's own rule of thumb for English; an estimate, flagged as such in
// the UsageRecord.
int64_t EstimateTokens(int64_t characters);
int64_t Utf8Length(std::string_view text);

struct Usage {
  bool present = false;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  // The part of prompt_tokens served from the provider's prompt cache
  // (usage.prompt_tokens_details.cached_tokens; Anthropic: cache_read_input_tokens), priced at
  // the model's cached-input price.
  int64_t cached_tokens = 0;
  // The part of prompt_tokens written to the provider's prompt cache
  // (usage.prompt_tokens_details.cache_write_tokens; Anthropic: cache_creation_input_tokens),
  // priced at the model's cache-write price.
  int64_t cache_write_tokens = 0;
  // The answer's own `service_tier` (OpenAI reports the tier that served the request, in the
  // body and in every chunk); empty: not reported.
  std::string service_tier;
  // Units the answer reports (endpoint_kinds.h); -1: not reported.
  int64_t images = -1;    // images returned (`data` of an images answer)
  int64_t audio_ms = -1;  // audio duration (`duration`, or usage of type "duration")
  std::string image_size, image_quality;  // the answer's own `size` / `quality`
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
  // Reads one event's data into the usage books (endpoint kinds whose events are not chat
  // chunks, endpoint_kinds.h): every event is forwarded as it came, [DONE] included.
  using EventUsage = void (*)(std::string_view data, Usage& usage, int64_t& relayed_chars);
  explicit StreamRelay(bool client_wants_usage, EventUsage event_usage = nullptr)
      : client_wants_usage_(client_wants_usage), event_usage_(event_usage) {}

  enum class Action { kForward, kDrop, kDone };
  // kDone for `data: [DONE]` (the caller writes the one final [DONE] itself); kDrop for the
  // usage-only chunk the client did not ask for.
  Action OnEvent(const SseEvent& event);

  const Usage& usage() const { return usage_; }
  int64_t relayed_chars() const { return relayed_chars_; }
  int64_t events_forwarded() const { return forwarded_; }

 private:
  bool client_wants_usage_;
  EventUsage event_usage_;
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
// The first `name` parameter of a request target's query, percent-decoded; "" when absent.
std::string QueryParam(std::string_view target, std::string_view name);

}  // namespace tollgate::edge
