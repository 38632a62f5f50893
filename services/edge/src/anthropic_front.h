// Anthropic's Messages API in front of the edge (issue #11): clients written for
// `@anthropic-ai/sdk` call `POST /v1/messages` and `/v1/messages/count_tokens` with their sk-tg-
// keys. To an Anthropic upstream the request passes through (provider.cpp); to an OpenAI-type
// upstream it is translated here, the mirror of anthropic.h: a Messages request into a chat
// completion request, a `chat.completion` back into a `message`, OpenAI's chunks into Anthropic's
// events (ChunkTranslator), OpenAI's errors into Anthropic's. Also the Anthropic form of the
// edge's own errors (one mapping from the ErrorCode table). Pure logic: no I/O, no clock; golden
// tests in test/anthropic_front_test.cpp.
//
// What does not translate to an OpenAI-type upstream:
// - refused (400 invalid_request_error): `document`, `search_result`, server-tool blocks and
//   server tools (web search, code execution...), an image inside a `tool_result`, a `system`
//   block that is not text, roles other than user / assistant;
// - dropped: `top_k`, `thinking` (and thinking blocks in assistant turns), `cache_control`,
//   `service_tier`, `container`, `mcp_servers`, a tool's `cache_control`;
// - `stop_reason` is `end_turn` for OpenAI's `stop` unless the upstream says which stop
//   sequence matched (OpenAI-compatible servers such as vLLM send `stop_reason` with it): then
//   `stop_sequence` with that sequence. OpenAI itself does not say, so it stays `end_turn`.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "src/anthropic.h"
#include "src/openai.h"
#include "tollgate/errors.h"

namespace tollgate::edge::anthropic {

// A Messages (`endpoint` kMessages) or count_tokens (kCountTokens) request body, parsed once and
// checked as Anthropic does: `model` and `messages` required; `max_tokens` a positive integer,
// required for kMessages (400 like the API); `stream` a boolean. prompt_estimate is the
// whole-body upper bound of openai.h (bytes / 3, each image block kImageTokens instead of its
// base64 bytes).
std::variant<ParsedRequest, RequestError> ParseMessagesRequest(Endpoint endpoint,
                                                               std::string_view body);

// The chat completion request for an OpenAI-type upstream (see the file comment for what is
// refused or dropped). `max_completion_tokens`: the budget goes as max_completion_tokens
// (OpenAI, Azure) rather than max_tokens (OpenAI-compatible servers). A streamed request asks
// for stream_options.include_usage, so every stream can be billed.
std::variant<Json, TranslationError> ToChatRequest(const Json& messages_body,
                                                   std::string upstream_model,
                                                   bool max_completion_tokens);

// OpenAI finish_reason → Anthropic stop_reason: stop → end_turn (stop_sequence when
// `matched_stop` names one of the request's stop sequences), length → max_tokens, tool_calls and
// function_call → tool_use, content_filter → refusal; null → null.
Json StopReason(const Json& finish_reason, const Json& matched_stop, const Json& stop_sequences);

// OpenAI usage → Anthropic usage: input_tokens = prompt - cached (Anthropic's input_tokens is
// the uncached part), cache_read_input_tokens = cached, cache_creation_input_tokens = 0.
Json UsageFromOpenAi(const Usage& usage);

// Usage of a whole Messages answer (a `message`): input, output and the cache's reads and
// writes; `completion_chars` gets the generated characters (text and tool inputs).
Usage UsageFromMessageBody(std::string_view body, int64_t* completion_chars);

// A `chat.completion` as a `message`: the first choice's text as a text block, its tool calls as
// tool_use blocks (arguments parsed; arguments that are not a JSON object become {}), stop
// reason and usage translated. `model_shown`: the model the client asked for.
Json ToMessage(const Json& chat_completion, std::string model_shown, const Json& stop_sequences);

// An OpenAI error answer (status + body) as an Anthropic error: the type from the status
// (Anthropic's table; 503 is overloaded_error with status 529), the message kept.
struct ClientError {
  int status = 500;
  std::string body;  // {"type":"error","error":{"type","message"}}
};
ClientError ChatErrorToMessages(int http_status, const Json& body);

// Anthropic's error types and bodies are written `type` first, as the API writes them.
// The edge's own errors in Anthropic's form: the type for an ErrorCode and the status (the
// table's, except 503-class codes, which Anthropic answers as 529 overloaded_error).
std::string_view ErrorType(ErrorCode code);
int ErrorStatus(ErrorCode code);
std::string ErrorBody(ErrorCode code, std::string_view message);
// `event: error\ndata: BODY\n\n`
std::string ErrorEvent(std::string_view body);
// The error of a stream error event (StreamError) as the stream's last event.
std::string ErrorEvent(const StreamError& error);

// An Anthropic upstream's stream, relayed as sent: each event is read for the usage
// (message_start, then message_delta's cumulative counts) and the generated characters; an
// `error` event is held back (error()) for the relay to end the stream with.
class MessagesStreamMeter final {
 public:
  // Whether to forward the event (false for an error event: it is error_event() then).
  bool OnEvent(const SseEvent& event);
  const MessagesUsage& usage() const { return usage_; }
  int64_t relayed_chars() const { return chars_; }
  const std::optional<StreamError>& error() const { return error_; }
  const std::string& error_event() const { return error_event_; }

 private:
  MessagesUsage usage_;
  int64_t chars_ = 0;
  std::optional<StreamError> error_;
  std::string error_event_;
};

// OpenAI `chat.completion.chunk`s (an OpenAI-type upstream's stream, always with the usage
// chunk) as Anthropic's events, fed the upstream bytes in any chunking. Every output string is one
// whole event, `event: NAME\ndata: {...}\n\n`:
// - the first chunk → message_start (usage all 0: OpenAI reports it at the end);
// - content (and refusal) → a text block: content_block_start, text_delta..., and its
//   content_block_stop when another block starts or the message ends;
// - each tool call (OpenAI index) → its own tool_use block (id, name, input {}) at the next block
//   index, its arguments as input_json_delta pieces as they arrive;
// - `data: [DONE]` (or Finish(), when the upstream ended without it) → the open block's
//   content_block_stop, message_delta (stop_reason, stop_sequence, usage with input, output and
//   cache read counts), message_stop;
// - a chunk with `error` (or one that is not JSON) → error() is set, nothing more is translated.
class ChunkTranslator final {
 public:
  ChunkTranslator(std::string model_shown, Json stop_sequences);

  std::vector<std::string> Feed(std::string_view bytes);
  // The closing events when the message has not ended yet; empty once it has.
  std::string Finish();

  const Usage& usage() const { return usage_; }
  int64_t relayed_chars() const { return chars_; }
  const std::optional<StreamError>& error() const { return error_; }
  bool finished() const { return finished_; }

 private:
  void OnChunk(const Json& chunk, std::vector<std::string>& out);
  void Start(const Json& chunk, std::vector<std::string>& out);
  void CloseBlock(std::vector<std::string>& out);
  void End(std::vector<std::string>& out);

  SseParser sse_;
  std::vector<SseEvent> events_;
  std::string model_shown_;
  Json stop_sequences_;
  bool started_ = false;
  bool finished_ = false;
  int64_t next_block_ = 0;
  int64_t open_block_ = -1;                // the block whose content_block_stop is still to come
  bool open_is_text_ = false;              // whether the open block is the text block
  std::map<int64_t, int64_t> tool_block_;  // OpenAI tool call index → block index
  Json finish_reason_;
  Json matched_stop_;
  Usage usage_;
  int64_t chars_ = 0;
  std::optional<StreamError> error_;
};

}  // namespace tollgate::edge::anthropic
