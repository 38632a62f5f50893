// The mock upstream's logic: fault knobs, reply generation and counters. No Beast here, so the
// one Beast-heavy file (server.cpp) stays the only slow one to compile.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tollgate::mock {

// One set of latency/fault knobs. Unset fields inherit from the layer below; the layers, lowest
// first: process defaults (flags) < per-key behaviour < model-name directives < x-mock-* headers.
struct Behavior {
  std::optional<int32_t> status;              // answer this HTTP status with an OpenAI error body
  std::optional<int32_t> retry_after_s;       // retry-after header; alone it implies status 429
  std::optional<std::string> error_code;      // error.code (default depends on the status)
  std::optional<int32_t> ttfb_ms;             // delay before the response headers
  std::optional<int32_t> chunks;              // streamed content chunks
  std::optional<int32_t> chunk_delay_ms;      // delay before each streamed content chunk
  std::optional<int32_t> size;                // content words
  std::optional<int32_t> reset_after_chunks;  // RST after N events (non-streaming: no answer)
  std::optional<bool> hang;                   // never answer; wait for the client to leave
  // Chat: this many of the prompt's tokens (at most all) reported as written to the prompt
  // cache (usage.prompt_tokens_details.cache_write_tokens, as the spec and OpenRouter have it).
  std::optional<int32_t> cache_write;
  // Anthropic mode only (the OpenAI mode ignores these):
  std::optional<int32_t> tool_calls;   // parallel tool_use blocks in a tool answer
  std::optional<int32_t> error_after;  // streaming: an `error` event after N events

  // Fields set in `upper` replace ours.
  void Overlay(const Behavior& upper);
  bool Empty() const;
};

// Sets one field by name (case-insensitive, '-' may stand for '_'); false with *error for an
// unknown name or a bad value.
bool SetBehaviorField(Behavior* behavior, std::string_view name, std::string_view value,
                      std::string* error);
// "status=429,retry_after=2" (the part after KEY: of --key-behavior). Names as in Behavior, with
// retry_after for retry_after_s and code for error_code; '-' may stand for '_'.
std::optional<Behavior> ParseBehaviorSpec(std::string_view spec, std::string* error);
// The control endpoint's body, e.g. {"status":500,"retry_after":2}; same names as the spec.
std::optional<Behavior> BehaviorFromJson(const nlohmann::json& json, std::string* error);
nlohmann::json BehaviorToJson(const Behavior& behavior);
// Directives encoded in a model name, e.g. "mock-429-retry-2"; grammar in mock_upstream.cpp.
Behavior ParseModelDirectives(std::string_view model);

struct Options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string port_file;
  int32_t threads = 2;
  Behavior defaults;
  std::vector<std::string> require_keys;  // empty: any non-empty key is accepted
  std::vector<std::pair<std::string, Behavior>> key_behaviors;
  std::vector<std::string> models;
  bool verbose = false;
};

// Runs until SIGINT/SIGTERM; returns the process exit code.
int RunServer(const Options& options);

// An OpenAI-format error: {"error":{"message","type","param","code"}}.
struct ApiError {
  int32_t status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::optional<std::string> param;
  std::optional<std::string> code;
};
// The error a real provider sends for `status` (e.g. 429 rate_limit_exceeded); `code` overrides.
ApiError ErrorForStatus(int32_t status, const std::optional<std::string>& code);
void AppendErrorJson(std::string& out, const ApiError& error);

void AppendJsonString(std::string& out, std::string_view text);

// Anthropic-format errors: {"type":"error","error":{"type","message"},"request_id"}. The type
// for a status as the Messages API names it (429 rate_limit_error, 529 overloaded_error...);
// `code` (the code knob) replaces the type.
ApiError AnthropicErrorForStatus(int32_t status, const std::optional<std::string>& code);
// `error` as the Messages API would send it: its type is kept when it is already an Anthropic
// type, otherwise chosen from its status.
void AppendAnthropicErrorJson(std::string& out, const ApiError& error, std::string_view request_id);

// Reply generation shared by both dialects (defined in mock_upstream.cpp).
namespace gen {
uint64_t Fnv1a(std::string_view text, uint64_t hash = 14695981039346656037ull);
int32_t TokensForChars(size_t chars);
void AppendInt(std::string& out, int64_t value);
void AppendHex(std::string& out, uint64_t value, int width);
// `words` ring words from `seed`, joined by spaces, cut into `chunks` pieces (end offsets).
void FillWords(uint64_t seed, int32_t words, int32_t chunks, std::string* text,
               std::vector<uint32_t>* cuts);
// Cuts `text` into `chunks` pieces at spaces where it can (bytes otherwise, never inside UTF-8).
void CutText(const std::string& text, int32_t chunks, std::vector<uint32_t>* cuts);
int32_t CountWords(std::string_view text);
// Plausible arguments for a JSON schema: each declared property gets a placeholder of its type.
std::string ArgumentsForSchema(const nlohmann::json& schema);
}  // namespace gen

// A reply sent as server-sent events, one event at a time.
class EventStream {
 public:
  virtual ~EventStream() = default;
  // Appends the next event; false once the last has been produced. *content is set when the
  // event carries generated content (the chunk delay goes before those).
  virtual bool NextEvent(std::string& out, bool* content) = 0;
  virtual bool finished() const = 0;
};

enum class CompletionKind { kChat, kText };

// One chat or text completion reply, decided up front and rendered either as one JSON body or as
// a sequence of server-sent events.
class Completion final : public EventStream {
 public:
  // Validates the request and plans the reply; nullopt with *error set when the request is bad.
  // `model_override` (Azure's deployment) replaces the body's model when non-empty.
  static std::optional<Completion> Plan(CompletionKind kind, const nlohmann::json& body,
                                        std::string_view model_override, const Behavior& behavior,
                                        uint64_t seq, int64_t created, ApiError* error);

  bool stream() const { return stream_; }
  void AppendJson(std::string& out) const;
  // Appends the next "data: ...\n\n" event; false once [DONE] has been produced. *content is set
  // when the event carries generated content (the chunk delay goes before those).
  bool NextEvent(std::string& out, bool* content) override;
  bool finished() const override { return phase_ == Phase::kEnd; }

 private:
  struct Choice {
    std::string text;            // the content, or a tool call's arguments
    std::vector<uint32_t> cuts;  // end offset of each streamed piece of `text`
    std::string tool_call_id;    // non-empty: this choice is a tool call
    std::string tool_name;
    const char* finish_reason = "stop";
    int32_t completion_tokens = 0;
  };
  enum class Phase { kRole, kContent, kFinish, kUsage, kDone, kEnd };

  Completion() = default;
  void AppendUsage(std::string& out) const;
  void AppendChunkChoiceOpen(std::string& out, size_t index) const;

  CompletionKind kind_ = CompletionKind::kChat;
  std::string id_;
  std::string model_;
  int64_t created_ = 0;
  std::vector<Choice> choices_;
  int32_t prompt_tokens_ = 0;
  int32_t cache_write_tokens_ = 0;  // part of prompt_tokens_ (Behavior::cache_write)
  bool stream_ = false;
  bool include_usage_ = false;
  std::string service_tier_ = "default";  // as chat answers report it (AnsweredServiceTier)
  std::string event_prefix_;              // every chunk's JSON up to "choices":[
  Phase phase_ = Phase::kRole;
  size_t step_ = 0;
  size_t steps_ = 0;
  size_t choice_ = 0;
};

class MockState;

// An Anthropic Messages API reply (POST /v1/messages), decided up front and rendered either as
// one JSON body or as the named SSE events of the Messages stream. See anthropic.cpp.
class AnthropicMessage final : public EventStream {
 public:
  // Validates the request as the Messages API does and plans the reply; nullopt with *error set
  // (an invalid_request_error) when the request is bad. `cache` remembers cached prompt prefixes
  // (may be null: nothing is ever cached then).
  static std::optional<AnthropicMessage> Plan(const nlohmann::json& body, const Behavior& behavior,
                                              uint64_t seq, MockState* cache, ApiError* error);
  // POST /v1/messages/count_tokens: the input_tokens a Plan of this body would report (cache
  // tokens included).
  static std::optional<int32_t> CountTokens(const nlohmann::json& body, ApiError* error);

  bool stream() const { return stream_; }
  void AppendJson(std::string& out) const;
  bool NextEvent(std::string& out, bool* content) override;
  bool finished() const override { return phase_ == Phase::kEnd; }

 private:
  struct Block {
    std::string text;            // text, or a tool_use block's input as JSON
    std::vector<uint32_t> cuts;  // end offset of each streamed delta of `text`
    std::string tool_id;         // non-empty: a tool_use block
    std::string tool_name;
  };
  enum class Phase { kStart, kBlockStart, kPing, kDelta, kBlockStop, kMessageDelta, kStop, kEnd };

  AnthropicMessage() = default;
  void AppendStop(std::string& out) const;
  void AppendUsage(std::string& out, int32_t output_tokens) const;
  void AppendBlockStart(std::string& out, const Block& block) const;

  std::string id_;
  std::string model_;
  std::string request_id_;
  std::vector<Block> blocks_;
  std::string stop_reason_ = "end_turn";
  std::optional<std::string> stop_sequence_;
  int32_t input_tokens_ = 0;
  int32_t cache_creation_tokens_ = 0;
  int32_t cache_read_tokens_ = 0;
  int32_t output_tokens_ = 0;
  bool stream_ = false;
  int64_t error_after_ = -1;
  std::string error_type_ = "overloaded_error";
  Phase phase_ = Phase::kStart;
  size_t block_ = 0;
  size_t piece_ = 0;
  int64_t sent_ = 0;
  bool pinged_ = false;
};

// The Responses API's stored responses (responses.cpp), per API key: a response is visible only
// to the key that created it, as in OpenAI's accounts. A background response is stored queued
// with what it will be once it has run (its final object and its whole event stream): it is
// in_progress when looked at before `ready_at`, and its final self from then on (or from the
// moment its events were streamed); a cancel keeps it cancelled. Thread-safe.
class ResponsesStore final {
 public:
  using Clock = std::chrono::steady_clock;
  // One event of a stream: the frame and whether it carries generated content.
  using Events = std::vector<std::pair<std::string, bool>>;

  // A new id: "resp_" + 48 hex digits; items get "msg_", "fc_" ids alike.
  std::string NewId(std::string_view prefix);
  void Put(std::string_view key, const std::string& id, std::string response_json,
           std::string input_items_json);
  // A background response: `queued_json` now, `running_json` once looked at before `ready_at`,
  // `final_json` from then on; `events` is what a streamed retrieve replays.
  void PutBackground(std::string_view key, const std::string& id, std::string queued_json,
                     std::string running_json, std::string final_json, Events events,
                     std::string input_items_json, Clock::time_point ready_at);
  // The response's JSON, or nullopt when this key has none by that id.
  std::optional<std::string> Get(std::string_view key, std::string_view id);
  std::optional<std::string> InputItems(std::string_view key, std::string_view id) const;
  bool Delete(std::string_view key, std::string_view id);
  // Replaces a stored response's JSON (cancel); a background response then never finishes.
  void Update(std::string_view key, std::string_view id, std::string response_json);
  // A background response's events after `starting_after` (-1: all): the stream runs it to its
  // end, so it is final from now on (unless it was cancelled: then the events up to the
  // cancellation, in_progress). nullopt: no events (not background).
  std::optional<Events> StreamEvents(std::string_view key, std::string_view id,
                                     int64_t starting_after);

 private:
  struct Stored {
    std::string response;
    std::string input_items;  // a JSON array, oldest first
    // Background only: what it becomes, and when.
    bool background = false;
    std::string running;
    std::string final_response;  // empty once final (or cancelled)
    Events events;
    Clock::time_point ready_at;
  };
  void Advance(Stored& stored);  // a background response's state at this moment
  mutable std::mutex mu_;
  std::unordered_map<std::string, Stored> by_key_id_;  // key + '\n' + id
  std::atomic<uint64_t> next_{0};
};

// POST /v1/responses: one response, decided up front and rendered as one JSON body or as the
// typed events of the Responses stream (no [DONE]). Stored (unless store is false) in `store`
// under `key`. A function tool is called when the request has function tools and its last input
// is the user's (like the chat mock's trigger); after a function_call_output the reply says what
// the tool returned. Usage: input tokens (the previous response's whole context counts as cached),
// output tokens (one per word) with reasoning tokens when `reasoning` is asked for.
class ResponseReply final : public EventStream {
 public:
  static std::optional<ResponseReply> Plan(const nlohmann::json& body, const Behavior& behavior,
                                           std::string_view key, ResponsesStore& store,
                                           int64_t created, ApiError* error);
  bool stream() const { return stream_; }
  void AppendJson(std::string& out) const { out += json_; }
  bool NextEvent(std::string& out, bool* content) override;
  bool finished() const override { return next_ >= events_.size(); }
  // A stored background response's events, streamed again.
  static ResponseReply Replay(ResponsesStore::Events events);

 private:
  ResponseReply() = default;
  bool stream_ = false;
  std::string json_;
  std::vector<std::pair<std::string, bool>> events_;  // (event, carries content)
  size_t next_ = 0;
};

// GET ?stream=true on a stored response: a background response's events from `starting_after`
// (Replay), else nullopt with *status and *error set (404 unknown, 400 not background).
std::optional<ResponseReply> ResponseReplay(std::string_view key, std::string_view id,
                                            std::string_view query, ResponsesStore& store,
                                            int32_t* status, std::string* error);

// GET, DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items (`query` for limit,
// order, after): the status and body to answer.
std::pair<int32_t, std::string> ResponseFollowUp(std::string_view method, std::string_view key,
                                                 std::string_view id, std::string_view action,
                                                 std::string_view query, ResponsesStore& store);

// POST /v1/embeddings: writes the response body to *out, or returns false with *error set.
bool BuildEmbeddings(const nlohmann::json& body, std::string_view model_override, std::string* out,
                     ApiError* error);
std::string ModelListJson(const std::vector<std::string>& models);
void AppendModelJson(std::string& out, std::string_view id);

// The Files API (files.cpp): an upload is a multipart/form-data body scanned as it arrives.
// Of the `file` part only the byte count, the file name and the first kFileKeepBytes are kept
// (GET /v1/files/{id}/content returns those: the whole file for any test-sized file).
constexpr size_t kFileKeepBytes = 1024 * 1024;

// The boundary of a multipart/form-data content type; "" for another type.
std::string MultipartBoundary(std::string_view content_type);

class MultipartScanner final {
 public:
  explicit MultipartScanner(std::string boundary);
  // Feeds the next bytes of the body, in any chunking; false once the body is malformed.
  bool Feed(std::string_view bytes);
  bool finished() const { return state_ == State::kDone; }
  const std::string& error() const { return error_; }
  bool saw_file() const { return saw_file_; }
  const std::string& filename() const { return filename_; }
  const std::string& purpose() const { return purpose_; }
  uint64_t file_bytes() const { return file_bytes_; }
  std::string& file_head() { return file_head_; }

 private:
  enum class State { kPreamble, kAfterDelimiter, kHeaders, kBody, kDone, kError };
  bool Fail(std::string why);
  void Data(std::string_view bytes);

  const std::string delimiter_;  // CRLF "--" boundary
  std::string pending_;          // bytes not yet scanned: at most a part's head or a delimiter
  State state_ = State::kPreamble;
  std::string error_;
  std::string part_name_;
  bool part_is_file_ = false;
  bool saw_file_ = false;
  std::string filename_;
  std::string purpose_;
  uint64_t file_bytes_ = 0;
  std::string file_head_;
};

struct StoredFile {
  std::string id;
  std::string filename;
  std::string purpose;
  uint64_t bytes = 0;
  int64_t created_at = 0;
  std::string content;  // the first kFileKeepBytes
};

nlohmann::json FileJson(const StoredFile& file);
bool ValidFilePurpose(std::string_view purpose);

// Files and batches, in memory, shared by all connections.
class FileStore final {
 public:
  // Stores the file under a new id; returns its OpenAIFile JSON.
  std::string Add(StoredFile file);
  std::optional<StoredFile> Get(std::string_view id) const;
  bool Delete(std::string_view id);
  // ListFilesResponse: newest first unless ascending.
  std::string ListJson(std::string_view purpose, bool ascending, size_t limit) const;
  // POST /v1/batches: the Batch JSON, or nullopt with *error (400, or 404 for an unknown file).
  std::optional<std::string> CreateBatch(const nlohmann::json& body, ApiError* error);
  std::optional<std::string> GetBatch(std::string_view id) const;

 private:
  mutable std::mutex mu_;
  uint64_t next_ = 0;
  std::vector<StoredFile> files_;
  std::vector<std::pair<std::string, std::string>> batches_;  // id, JSON
};

// Request counters and per-key behaviours, shared by all connections.
class MockState final {
 public:
  explicit MockState(std::vector<std::pair<std::string, Behavior>> initial_key_behaviors);

  // Counts one API request (key may be empty) and returns the behaviour set for its key.
  std::optional<Behavior> Admit(std::string_view key, std::string_view path);
  void Finish() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }
  void CountCancelled() { cancelled_.fetch_add(1, std::memory_order_relaxed); }

  // An empty behaviour removes the key's entry.
  void SetKeyBehavior(std::string_view key, const Behavior& behavior);
  nlohmann::json StatsJson() const;
  nlohmann::json KeyBehaviorsJson() const;
  // Zeroes the counters (not in_flight, which is live) and restores the start-up key behaviours.
  void Reset();
  // Anthropic prompt caching: true when this prefix was seen before (a cache read); otherwise
  // remembers it (a cache write) and returns false. Reset() forgets them all.
  bool SeenCachePrefix(uint64_t hash);

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <typename V>
  using Map = std::unordered_map<std::string, V, Hash, std::equal_to<>>;

  const std::vector<std::pair<std::string, Behavior>> initial_key_behaviors_;
  mutable std::mutex mu_;
  uint64_t total_ = 0;
  Map<uint64_t> by_key_;
  Map<uint64_t> by_path_;
  Map<Behavior> key_behaviors_;
  std::unordered_set<uint64_t> cache_prefixes_;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> cancelled_{0};
};

}  // namespace tollgate::mock
