// Anthropic's Messages API behind the OpenAI Chat Completions API (issue #11): the translation of
// a chat request into a Messages request, of a Messages answer (whole or streamed) back into a
// chat completion, and of Anthropic's errors into OpenAI's. Pure logic: no I/O, no clock (the
// caller passes `created`), unit-tested with golden fixtures in test/anthropic_test.cpp.
// Used by provider.cpp for upstreams of type anthropic (chat completions only).
//
// What does not translate:
// - refused (400 `invalid_request_error`, `param` = the field): `n` > 1, `logprobs`,
//   `top_logprobs`, a `response_format` other than text, audio output, a message part other
//   than text / image_url (https or base64 data: URLs of jpeg, png, gif or webp), a `function`
//   message, tool-call arguments that are not a JSON object, a tool that is not a function,
//   `tool_choice` required / named without tools;
// - dropped (Anthropic has no equivalent): frequency/presence penalties, `seed`, `logit_bias`,
//   `store`, `metadata`, `service_tier`, `prediction`, `reasoning_effort`, a message's `name`,
//   an image part's `detail`, a tool's `strict`;
// - kept: `cache_control` (a prompt-caching breakpoint, in the form LiteLLM and OpenRouter take
//   it) on a text or image part, on a message (its last block), on a tool message (its
//   tool_result) and on a tool; a block carrying one is never collapsed into a plain string;
// - `temperature` is clamped to Anthropic's 0..1 (OpenAI allows 0..2): a value above 1 asks for
//   "as random as possible", which 1 is on Anthropic's scale; scaling by 1/2 would instead change
//   the meaning of every common value (0.7 would become 0.35).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "src/openai.h"
#include "tollgate/errors.h"

namespace tollgate::edge::anthropic {

using Json = nlohmann::json;

// Why a chat request cannot go to Anthropic: the client sees `code` (a 400) with the message.
struct TranslationError {
  ErrorCode code = ErrorCode::kInvalidRequest;
  std::string message;
  std::string param;  // empty: null
};

// Thrown by a translation's checks (both directions: this file's and anthropic_front.h's) for
// what does not translate; TranslateOrRefuse turns it into a TranslationError.
struct TranslationRefusal {
  std::string message;
  std::string param;
};

// Runs one request translation: a TranslationRefusal, or a JSON shape no check expected (a wrong
// type deep in a message), becomes a 400 TranslationError instead of an exception.
std::variant<Json, TranslationError> TranslateOrRefuse(const std::function<Json()>& translate);

// The body of `POST /v1/messages` for an OpenAI chat request (already validated by ParseRequest):
// - `system` and `developer` messages, wherever they are, become `system` (a string when there is
//   one string, else text blocks in order);
// - `tool` messages become user messages of `tool_result` blocks; then consecutive messages of the
//   same role are merged into one (Anthropic wants the roles to alternate);
// - assistant `tool_calls` become `tool_use` blocks after the text, ids kept, arguments parsed;
// - a message whose content is one text block is sent as a string;
// - max_completion_tokens, else max_tokens, else `default_max_tokens` (Anthropic requires one).
std::variant<Json, TranslationError> ToMessagesRequest(const Json& openai_chat_body,
                                                       std::string upstream_model,
                                                       int64_t default_max_tokens);

// Anthropic's four token counts, kept apart so billing can price each (cache writes cost more
// than input, cache reads less).
struct MessagesUsage {
  bool present = false;
  int64_t input_tokens = 0;  // uncached input
  int64_t output_tokens = 0;
  int64_t cache_read_input_tokens = 0;      // read from the prompt cache
  int64_t cache_creation_input_tokens = 0;  // written to the prompt cache
};

// Anthropic's `usage` object (absent fields count 0).
MessagesUsage UsageFromMessages(const Json& usage);
// OpenAI's usage: prompt_tokens = input + cache read + cache write (what the model read),
// completion_tokens = output, prompt_tokens_details.cached_tokens = cache read and
// prompt_tokens_details.cache_write_tokens = cache write (the OpenAI spec's field).
Json UsageToOpenAi(const MessagesUsage& usage);
// The edge's bookkeeping form of the same counts.
Usage ToEdgeUsage(const MessagesUsage& usage);

// end_turn / stop_sequence / pause_turn → stop, max_tokens → length, tool_use → tool_calls,
// refusal → content_filter; null → null; anything else → stop.
Json FinishReason(const Json& stop_reason);

struct ChatCompletion {
  Json body;  // an OpenAI `chat.completion`
  MessagesUsage usage;
};

// A Messages answer as a chat completion: text blocks joined into `content` (null when there are
// none), `tool_use` blocks as `tool_calls` (arguments = the input as a JSON string), other blocks
// (thinking) dropped. `model_shown` is the model the client asked for (empty: the answer's).
ChatCompletion ToChatCompletion(const Json& messages_response, std::string model_shown,
                                int64_t created = 0);

// An Anthropic error answer as the client should see it.
struct UpstreamError {
  int client_status = 502;  // the HTTP status for the client
  // The status the attempt loop should count (KindForStatus): 529 counts as 503.
  int outcome_status = 502;
  Json body;  // {"error":{"message","type","param","code"}}
  // Another key or upstream may succeed: 429, 5xx (529 included), 401 and 403, as the edge's
  // attempts fail over.
  bool retryable = false;
  std::string anthropic_type;  // e.g. "overloaded_error"; empty when the body had none
};

// rate_limit_error 429, overloaded_error (529) 503, api_error 500, authentication_error 401,
// permission_error 403, not_found_error 404, invalid_request_error 400, request_too_large 413;
// an unknown or missing type goes by `http_status`.
UpstreamError MessagesErrorToOpenAi(int http_status, const Json& body);

// An `error` event in a stream.
struct StreamError {
  std::string type;  // Anthropic's, e.g. "overloaded_error"
  std::string message;
};

// Anthropic's server-sent events to OpenAI `chat.completion.chunk`s, fed the upstream bytes in
// any chunking (the SSE framing is openai.h's incremental SseParser; each complete event is
// translated once). Every output string is one whole event, `data: {...}\n\n`.
// - message_start → the role chunk (id and model remembered; input and cache usage counted);
// - text_delta → delta.content; a tool_use block → a tool_calls delta with its OpenAI index
//   (0, 1, 2... in the order of tool blocks), id, type, name and arguments ""; each
//   input_json_delta → delta.tool_calls[{index, function:{arguments: partial_json}}];
// - message_delta → a chunk with the finish_reason (its usage updates the counts);
// - message_stop → the usage chunk (choices: []) when the client asked for include_usage;
// - ping, content_block_stop, thinking deltas → nothing;
// - error (or an event that is not JSON) → error() is set and nothing more is translated.
class StreamTranslator final {
 public:
  // `model_shown`: the model the client asked for (empty: the one message_start names).
  StreamTranslator(std::string model_shown, bool include_usage, int64_t created = 0);

  std::vector<std::string> Feed(std::string_view bytes);
  // The stream's end for the client: `data: [DONE]\n\n`.
  std::string Finish();

  const std::optional<StreamError>& error() const { return error_; }
  bool finished() const { return finished_; }  // message_stop seen
  const MessagesUsage& usage() const { return usage_; }
  const std::string& finish_reason() const { return finish_reason_; }

 private:
  void OnEvent(const Json& event, std::vector<std::string>& out);
  std::string Chunk(Json delta, Json finish_reason = nullptr) const;

  SseParser sse_;
  std::vector<SseEvent> events_;  // reused between Feed calls
  std::string model_shown_;
  bool include_usage_;
  int64_t created_;
  std::string id_, model_;
  std::unordered_map<int64_t, int64_t> tool_index_;  // Anthropic block index → tool call index
  int64_t tool_calls_ = 0;
  MessagesUsage usage_;
  std::string finish_reason_;
  std::optional<StreamError> error_;
  bool started_ = false;
  bool finished_ = false;
};

}  // namespace tollgate::edge::anthropic
