#include "mock_upstream.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <openssl/evp.h>

#include <nlohmann/json.hpp>

namespace tollgate::mock {
namespace {

using Json = nlohmann::json;

// Replies are read off this ring of words, starting at a position hashed from the request, so a
// reply is deterministic and the streamed pieces concatenate to the non-streamed content.
constexpr std::array<std::string_view, 32> kWords = {
    "mock", "reply", "from",   "the",   "tollgate", "test",  "upstream", "with",
    "a",    "plain", "stream", "of",    "words",    "so",    "every",    "gateway",
    "can",  "relay", "each",   "token", "it",       "gets",  "back",     "to",
    "its",  "own",   "client", "while", "counting", "usage", "and",      "cost"};
constexpr int32_t kDefaultWords = 10;
constexpr int32_t kMaxWords = 1 << 20;
constexpr int32_t kMaxChoices = 128;
constexpr int32_t kDefaultEmbeddingDims = 8;
constexpr int32_t kMaxEmbeddingDims = 8192;

}  // namespace

namespace gen {

uint64_t Fnv1a(std::string_view text, uint64_t hash) {
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

}  // namespace gen

using namespace gen;

namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

namespace gen {

int32_t TokensForChars(size_t chars) { return static_cast<int32_t>((chars + 3) / 4); }

void AppendInt(std::string& out, int64_t value) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  out.append(buf, end);
}

void AppendHex(std::string& out, uint64_t value, int width) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%0*llx", width, static_cast<unsigned long long>(value));
  out.append(buf);
}

}  // namespace gen

namespace {

// A message's text: a string, or the text parts of a content array.
std::string ContentText(const Json& content) {
  if (content.is_string()) return content.get<std::string>();
  std::string text;
  if (content.is_array()) {
    for (const auto& part : content) {
      auto it = part.is_object() ? part.find("text") : part.end();
      if (it != part.end() && it->is_string()) {
        if (!text.empty()) text.push_back(' ');
        text += it->get_ref<const std::string&>();
      }
    }
  }
  return text;
}

ApiError BadRequest(std::string message, std::optional<std::string> param) {
  ApiError error;
  error.status = 400;
  error.message = std::move(message);
  error.param = std::move(param);
  return error;
}

// The tier a chat answer reports for the request's service_tier, as OpenAI does: absent, null or
// "auto" are served by the project's tier ("default" here), "fast" is reported as "priority",
// the other tiers as asked; anything else is a 400.
bool AnsweredServiceTier(const Json& body, std::string* tier, ApiError* error) {
  *tier = "default";
  auto it = body.find("service_tier");
  if (it == body.end() || it->is_null()) return true;
  static constexpr std::string_view kTiers[] = {"auto",  "default",  "flex",
                                                "scale", "priority", "fast"};
  if (!it->is_string() || std::find(std::begin(kTiers), std::end(kTiers),
                                    it->get_ref<const std::string&>()) == std::end(kTiers)) {
    *error = BadRequest(
        "Invalid value for 'service_tier': expected one of auto, default, flex, scale, priority "
        "or fast.",
        "service_tier");
    return false;
  }
  const std::string& asked = it->get_ref<const std::string&>();
  *tier = asked == "auto" ? "default" : asked == "fast" ? "priority" : asked;
  return true;
}

// Reads an optional integer field in [lo, hi]; false (with *error) when present but invalid.
bool OptionalInt(const Json& body, const char* name, int64_t lo, int64_t hi,
                 std::optional<int64_t>* value, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
    *error = BadRequest("Invalid value for '" + std::string(name) + "': expected an integer from " +
                            std::to_string(lo) + " to " + std::to_string(hi) + ".",
                        name);
    return false;
  }
  *value = it->get<int64_t>();
  return true;
}

bool OptionalBool(const Json& body, const char* name, bool* value, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) {
    *error = BadRequest("Invalid type for '" + std::string(name) + "': expected a boolean.", name);
    return false;
  }
  *value = it->get<bool>();
  return true;
}

}  // namespace

namespace gen {

// `words` ring words from `seed`, joined by spaces, cut into `chunks` pieces at word boundaries
// (each piece after the first starts with its space, as real token streams do).
void FillWords(uint64_t seed, int32_t words, int32_t chunks, std::string* text,
               std::vector<uint32_t>* cuts) {
  text->reserve(static_cast<size_t>(words) * 7);
  chunks = std::clamp(chunks, 1, std::max(words, 1));
  int32_t next_cut = 1;
  for (int32_t i = 0; i < words; ++i) {
    if (i > 0) text->push_back(' ');
    text->append(kWords[(seed + static_cast<uint64_t>(i)) % kWords.size()]);
    // Piece j holds words [j*words/chunks, (j+1)*words/chunks).
    while (next_cut <= chunks &&
           static_cast<int64_t>(next_cut) * words / chunks == static_cast<int64_t>(i) + 1) {
      cuts->push_back(static_cast<uint32_t>(text->size()));
      ++next_cut;
    }
  }
  if (words == 0) cuts->push_back(0);
}

// Cuts an arbitrary text into `chunks` pieces at spaces where it can (bytes otherwise, never
// inside a UTF-8 sequence).
void CutText(const std::string& text, int32_t chunks, std::vector<uint32_t>* cuts) {
  chunks = std::clamp<int32_t>(chunks, 1, static_cast<int32_t>(std::max<size_t>(text.size(), 1)));
  size_t prev = 0;
  for (int32_t j = 1; j < chunks; ++j) {
    size_t target = text.size() * static_cast<size_t>(j) / static_cast<size_t>(chunks);
    size_t space = text.rfind(' ', target);
    size_t cut = (space != std::string::npos && space > prev) ? space : target;
    while (cut < text.size() && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) ++cut;
    if (cut <= prev || cut >= text.size()) continue;
    cuts->push_back(static_cast<uint32_t>(cut));
    prev = cut;
  }
  cuts->push_back(static_cast<uint32_t>(text.size()));
}

int32_t CountWords(std::string_view text) {
  int32_t words = 0;
  bool in_word = false;
  for (char c : text) {
    bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return std::max(words, 1);
}

std::string ArgumentsForSchema(const Json& schema_json) {
  Json args = Json::object();
  const Json* params = &schema_json;
  if (params->is_object()) {
    auto props = params->find("properties");
    if (props != params->end() && props->is_object()) {
      for (const auto& [name, schema] : props->items()) {
        std::string type =
            schema.is_object() && schema.contains("type") && schema["type"].is_string()
                ? schema["type"].get<std::string>()
                : "string";
        if (schema.is_object() && schema.contains("enum") && schema["enum"].is_array() &&
            !schema["enum"].empty()) {
          args[name] = schema["enum"][0];
        } else if (type == "integer" || type == "number") {
          args[name] = 1;
        } else if (type == "boolean") {
          args[name] = true;
        } else if (type == "array") {
          args[name] = Json::array();
        } else if (type == "object") {
          args[name] = Json::object();
        } else {
          args[name] = "mock";
        }
      }
    }
  }
  return args.dump();
}

}  // namespace gen

namespace {

// Plausible arguments for a function: each declared property gets a placeholder of its type.
std::string ArgumentsFor(const Json& function) {
  auto params = function.find("parameters");
  return ArgumentsForSchema(params != function.end() ? *params : Json());
}

// The function to call for a chat request with tools, or nullptr when the reply is text.
const Json* ToolToCall(const Json& body, const Json& last_message) {
  auto tools = body.find("tools");
  if (tools == body.end() || !tools->is_array() || tools->empty()) return nullptr;
  auto role = last_message.find("role");
  if (role == last_message.end() || *role != "user") return nullptr;
  std::string wanted;
  auto choice = body.find("tool_choice");
  if (choice != body.end()) {
    if (choice->is_string() && *choice == "none") return nullptr;
    if (choice->is_object()) {
      auto fn = choice->find("function");
      if (fn != choice->end() && fn->is_object() && fn->contains("name") &&
          (*fn)["name"].is_string()) {
        wanted = (*fn)["name"].get<std::string>();
      }
    }
  }
  for (const auto& tool : *tools) {
    if (!tool.is_object()) continue;
    auto fn = tool.find("function");
    if (fn == tool.end() || !fn->is_object() || !fn->contains("name") ||
        !(*fn)["name"].is_string()) {
      continue;
    }
    if (wanted.empty() || (*fn)["name"] == wanted) return &*fn;
  }
  return nullptr;
}

bool ParseInt32(std::string_view text, int32_t* value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

bool IsDigits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

bool SetBehaviorField(Behavior* b, std::string_view field, std::string_view value,
                      std::string* error) {
  std::string name(field);
  for (char& c : name)
    c = c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  auto set_int = [&](std::optional<int32_t>* field) {
    int32_t v = 0;
    if (!ParseInt32(value, &v) || v < 0) {
      *error = "invalid value '" + std::string(value) + "' for " + name;
      return false;
    }
    *field = v;
    return true;
  };
  if (name == "status") return set_int(&b->status);
  if (name == "retry_after" || name == "retry_after_s") return set_int(&b->retry_after_s);
  if (name == "ttfb_ms" || name == "ttfb") return set_int(&b->ttfb_ms);
  if (name == "chunks") return set_int(&b->chunks);
  if (name == "chunk_delay_ms" || name == "delay_ms") return set_int(&b->chunk_delay_ms);
  if (name == "size" || name == "words") return set_int(&b->size);
  if (name == "reset_after_chunks" || name == "reset") return set_int(&b->reset_after_chunks);
  if (name == "tool_calls" || name == "tools") return set_int(&b->tool_calls);
  if (name == "cache_write") return set_int(&b->cache_write);
  if (name == "error_after" || name == "midstream") return set_int(&b->error_after);
  if (name == "code" || name == "error_code") {
    b->error_code = std::string(value);
    return true;
  }
  if (name == "hang") {
    if (value.empty() || value == "1" || value == "true") {
      b->hang = true;
    } else if (value == "0" || value == "false") {
      b->hang = false;
    } else {
      *error = "invalid value '" + std::string(value) + "' for hang";
      return false;
    }
    return true;
  }
  *error = "unknown behaviour field '" + name + "'";
  return false;
}

// ---------------------------------------------------------------------------------------------
// Behaviour

void Behavior::Overlay(const Behavior& upper) {
  if (upper.status) status = upper.status;
  if (upper.retry_after_s) retry_after_s = upper.retry_after_s;
  if (upper.error_code) error_code = upper.error_code;
  if (upper.ttfb_ms) ttfb_ms = upper.ttfb_ms;
  if (upper.chunks) chunks = upper.chunks;
  if (upper.chunk_delay_ms) chunk_delay_ms = upper.chunk_delay_ms;
  if (upper.size) size = upper.size;
  if (upper.reset_after_chunks) reset_after_chunks = upper.reset_after_chunks;
  if (upper.hang) hang = upper.hang;
  if (upper.tool_calls) tool_calls = upper.tool_calls;
  if (upper.error_after) error_after = upper.error_after;
  if (upper.cache_write) cache_write = upper.cache_write;
}

bool Behavior::Empty() const {
  return !status && !retry_after_s && !error_code && !ttfb_ms && !chunks && !chunk_delay_ms &&
         !size && !reset_after_chunks && !hang && !tool_calls && !error_after && !cache_write;
}

std::optional<Behavior> ParseBehaviorSpec(std::string_view spec, std::string* error) {
  Behavior b;
  while (!spec.empty()) {
    size_t comma = spec.find(',');
    std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    std::string name(item.substr(0, eq));
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1);
    if (!SetBehaviorField(&b, name, value, error)) return std::nullopt;
  }
  return b;
}

std::optional<Behavior> BehaviorFromJson(const Json& json, std::string* error) {
  if (!json.is_object()) {
    *error = "expected a JSON object";
    return std::nullopt;
  }
  Behavior b;
  for (const auto& [name, value] : json.items()) {
    if (value.is_null()) continue;
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_boolean()) {
      text = value.get<bool>() ? "true" : "false";
    } else if (value.is_number_integer()) {
      text = std::to_string(value.get<int64_t>());
    } else {
      *error = "invalid value for " + name;
      return std::nullopt;
    }
    if (!SetBehaviorField(&b, name, text, error)) return std::nullopt;
  }
  return b;
}

Json BehaviorToJson(const Behavior& b) {
  Json json = Json::object();
  if (b.status) json["status"] = *b.status;
  if (b.retry_after_s) json["retry_after"] = *b.retry_after_s;
  if (b.error_code) json["code"] = *b.error_code;
  if (b.ttfb_ms) json["ttfb_ms"] = *b.ttfb_ms;
  if (b.chunks) json["chunks"] = *b.chunks;
  if (b.chunk_delay_ms) json["chunk_delay_ms"] = *b.chunk_delay_ms;
  if (b.size) json["size"] = *b.size;
  if (b.reset_after_chunks) json["reset_after_chunks"] = *b.reset_after_chunks;
  if (b.hang) json["hang"] = *b.hang;
  if (b.tool_calls) json["tool_calls"] = *b.tool_calls;
  if (b.error_after) json["error_after"] = *b.error_after;
  if (b.cache_write) json["cache_write"] = *b.cache_write;
  return json;
}

// Model-name directives. A model named "mock-" followed by dash-separated tokens selects knobs;
// tokens are read left to right:
//   fail-STATUS | STATUS     answer STATUS (a bare token of exactly 3 digits, 100..599)
//   retry-S                  retry-after: S seconds (implies 429 when no status is given)
//   code-CODE                error.code, e.g. code-insufficient_quota
//   ttfb-MS | slow-ttfb-MS   wait MS before the response headers ("slow" is a filler word)
//   chunks-N                 N streamed content chunks
//   delay-MS                 wait MS before each streamed content chunk
//   size-N | words-N         N content words
//   reset-N                  streaming: reset the connection after N events; else no answer
//   hang                     never answer, hold the connection until the client leaves
//   tools-N                  Anthropic mode: N parallel tool_use blocks
//   midstream-N              Anthropic mode, streaming: an `error` event after N events
//   cachewrite-N             chat: N prompt tokens reported as cache writes (cache_write_tokens)
// Any other token is ignored, so "mock-gpt-4o" or "mock-a" are plain model names, and a keyword
// whose value is missing or not a number is ignored too.
// Examples: mock-fail-500, mock-429-retry-2, mock-slow-ttfb-300, mock-chunks-5-delay-200,
// mock-hang, mock-reset-3, mock-400-code-context_length_exceeded.
Behavior ParseModelDirectives(std::string_view model) {
  Behavior b;
  constexpr std::string_view kPrefix = "mock-";
  if (!model.starts_with(kPrefix)) return b;
  std::vector<std::string_view> tokens;
  for (std::string_view rest = model.substr(kPrefix.size()); !rest.empty();) {
    size_t dash = rest.find('-');
    tokens.push_back(rest.substr(0, dash));
    rest = dash == std::string_view::npos ? std::string_view() : rest.substr(dash + 1);
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::string_view token = tokens[i];
    int32_t value = 0;
    bool has_value =
        i + 1 < tokens.size() && IsDigits(tokens[i + 1]) && ParseInt32(tokens[i + 1], &value);
    std::optional<int32_t>* field = nullptr;
    if (token == "fail") field = &b.status;
    if (token == "retry") field = &b.retry_after_s;
    if (token == "ttfb") field = &b.ttfb_ms;
    if (token == "chunks") field = &b.chunks;
    if (token == "delay") field = &b.chunk_delay_ms;
    if (token == "size" || token == "words") field = &b.size;
    if (token == "reset") field = &b.reset_after_chunks;
    if (token == "tools") field = &b.tool_calls;
    if (token == "midstream") field = &b.error_after;
    if (token == "cachewrite") field = &b.cache_write;
    if (field != nullptr && has_value) {
      *field = value;
      ++i;
    } else if (token == "code" && i + 1 < tokens.size()) {
      b.error_code = std::string(tokens[++i]);
    } else if (token == "hang") {
      b.hang = true;
    } else if (token.size() == 3 && IsDigits(token) && ParseInt32(token, &value) && value >= 100 &&
               value <= 599) {
      b.status = value;
    }
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// Errors and JSON helpers

ApiError ErrorForStatus(int32_t status, const std::optional<std::string>& code) {
  ApiError e;
  e.status = status;
  switch (status) {
    case 400:
      e.message =
          "This model's maximum context length is 128000 tokens. However, your messages "
          "resulted in 130000 tokens. Please reduce the length of the messages.";
      e.param = "messages";
      e.code = "context_length_exceeded";
      break;
    case 401:
      e.message = "Incorrect API key provided.";
      e.code = "invalid_api_key";
      break;
    case 403:
      e.message = "Country, region, or territory not supported.";
      e.type = "request_forbidden";
      e.code = "unsupported_country_region_territory";
      break;
    case 404:
      e.message = "The model does not exist or you do not have access to it.";
      e.code = "model_not_found";
      break;
    case 429:
      e.message = "Rate limit reached for requests. Please try again later.";
      e.type = "requests";
      e.code = "rate_limit_exceeded";
      break;
    case 503:
      e.message = "The engine is currently overloaded, please try again later.";
      e.type = "server_error";
      break;
    default:
      if (status >= 500) {
        e.message = "The server had an error while processing your request. Sorry about that!";
        e.type = "server_error";
      } else {
        e.message = "Mock upstream error " + std::to_string(status) + ".";
      }
  }
  if (code) {
    e.code = *code;
    if (*code == "insufficient_quota") {
      e.type = "insufficient_quota";
      e.message = "You exceeded your current quota, please check your plan and billing details.";
    }
  }
  return e;
}

void AppendJsonString(std::string& out, std::string_view text) {
  out.push_back('"');
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(text.data() + start, i - start);
    start = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\u%04x", c);
        out += buf;
      }
    }
  }
  out.append(text.data() + start, text.size() - start);
  out.push_back('"');
}

ApiError AnthropicErrorForStatus(int32_t status, const std::optional<std::string>& code) {
  ApiError e;
  e.status = status;
  switch (status) {
    case 400:
      e.type = "invalid_request_error";
      e.message = "prompt is too long: 210000 tokens > 200000 maximum";
      break;
    case 401:
      e.type = "authentication_error";
      e.message = "invalid x-api-key";
      break;
    case 403:
      e.type = "permission_error";
      e.message = "Your API key does not have permission to use the specified resource.";
      break;
    case 404:
      e.type = "not_found_error";
      e.message = "The requested resource could not be found.";
      break;
    case 413:
      e.type = "request_too_large";
      e.message = "Request exceeds the maximum allowed number of bytes.";
      break;
    case 429:
      e.type = "rate_limit_error";
      e.message =
          "This request would exceed the rate limit for your organization of 50 requests per "
          "minute. Please try again later.";
      break;
    case 529:
      e.type = "overloaded_error";
      e.message = "Overloaded";
      break;
    default:
      e.type = status >= 500 ? "api_error" : "invalid_request_error";
      e.message = status >= 500 ? "Internal server error"
                                : "Mock upstream error " + std::to_string(status) + ".";
  }
  if (code) e.type = *code;
  return e;
}

void AppendAnthropicErrorJson(std::string& out, const ApiError& error,
                              std::string_view request_id) {
  static constexpr std::string_view kTypes[] = {
      "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
      "request_too_large",     "rate_limit_error",     "api_error",        "overloaded_error",
      "billing_error",         "timeout_error"};
  std::string type = error.type;
  if (std::find(std::begin(kTypes), std::end(kTypes), type) == std::end(kTypes)) {
    type = AnthropicErrorForStatus(error.status, std::nullopt).type;
  }
  out += "{\"type\":\"error\",\"error\":{\"type\":";
  AppendJsonString(out, type);
  out += ",\"message\":";
  AppendJsonString(out, error.message);
  out += "},\"request_id\":";
  AppendJsonString(out, request_id);
  out += '}';
}

void AppendErrorJson(std::string& out, const ApiError& error) {
  out += "{\"error\":{\"message\":";
  AppendJsonString(out, error.message);
  out += ",\"type\":";
  AppendJsonString(out, error.type);
  out += ",\"param\":";
  if (error.param) {
    AppendJsonString(out, *error.param);
  } else {
    out += "null";
  }
  out += ",\"code\":";
  if (error.code) {
    AppendJsonString(out, *error.code);
  } else {
    out += "null";
  }
  out += "}}";
}

// ---------------------------------------------------------------------------------------------
// Completions

std::optional<Completion> Completion::Plan(CompletionKind kind, const Json& body,
                                           std::string_view model_override,
                                           const Behavior& behavior, uint64_t seq, int64_t created,
                                           ApiError* error) {
  if (!body.is_object()) {
    *error = BadRequest("The request body must be a JSON object.", std::nullopt);
    return std::nullopt;
  }
  Completion c;
  c.kind_ = kind;
  c.created_ = created;
  if (!model_override.empty()) {
    c.model_ = model_override;
  } else {
    auto model = body.find("model");
    if (model == body.end() || !model->is_string() ||
        model->get_ref<const std::string&>().empty()) {
      *error = BadRequest("you must provide a model parameter", "model");
      return std::nullopt;
    }
    c.model_ = model->get<std::string>();
  }
  std::optional<int64_t> n, max_tokens, max_completion_tokens;
  if (!OptionalInt(body, "n", 1, kMaxChoices, &n, error) ||
      !OptionalInt(body, "max_tokens", 1, INT32_MAX, &max_tokens, error) ||
      !OptionalInt(body, "max_completion_tokens", 1, INT32_MAX, &max_completion_tokens, error) ||
      !OptionalBool(body, "stream", &c.stream_, error)) {
    return std::nullopt;
  }
  if (kind == CompletionKind::kChat && !AnsweredServiceTier(body, &c.service_tier_, error))
    return std::nullopt;
  auto stream_options = body.find("stream_options");
  if (stream_options != body.end() && stream_options->is_object() &&
      !OptionalBool(*stream_options, "include_usage", &c.include_usage_, error)) {
    return std::nullopt;
  }
  int64_t word_limit = max_completion_tokens.value_or(max_tokens.value_or(INT32_MAX));

  int32_t words = behavior.size.value_or(behavior.chunks.value_or(kDefaultWords));
  words = std::clamp(words, 0, kMaxWords);
  int32_t chunks = behavior.chunks.value_or(words);
  const char* finish = "stop";
  if (words > word_limit) {
    words = static_cast<int32_t>(word_limit);
    finish = "length";
  }

  // What each choice says: (seed, prompt text) pairs; chat has one, text completions one per
  // prompt.
  std::vector<uint64_t> seeds;
  std::string tool_result;
  const Json* tool = nullptr;
  if (kind == CompletionKind::kChat) {
    auto messages = body.find("messages");
    if (messages == body.end() || !messages->is_array() || messages->empty()) {
      *error = BadRequest("'messages' must be a non-empty array.", "messages");
      return std::nullopt;
    }
    size_t chars = 0;
    for (const auto& message : *messages) {
      if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
        *error = BadRequest("Each message must be an object with a string 'role'.", "messages");
        return std::nullopt;
      }
      auto content = message.find("content");
      if (content != message.end()) chars += ContentText(*content).size();
      auto calls = message.find("tool_calls");
      if (calls != message.end()) chars += calls->dump().size();
    }
    // Tool definitions are part of the prompt the model reads, as the real API counts them.
    if (auto tools = body.find("tools"); tools != body.end() && tools->is_array())
      chars += tools->dump().size();
    c.prompt_tokens_ = std::max(1, TokensForChars(chars));
    c.cache_write_tokens_ = std::min(c.prompt_tokens_, behavior.cache_write.value_or(0));
    const Json& last = messages->back();
    std::string last_text = last.contains("content") ? ContentText(last["content"]) : "";
    seeds.push_back(Fnv1a(last_text));
    if (last["role"] == "tool") {
      tool_result = "The tool returned: " + last_text;
    } else {
      tool = ToolToCall(body, last);
    }
  } else {
    auto prompt = body.find("prompt");
    size_t chars = 0;
    int64_t tokens = 0;
    auto add_prompt = [&](const Json& p) {
      if (p.is_string()) {
        chars += p.get_ref<const std::string&>().size();
        seeds.push_back(Fnv1a(p.get_ref<const std::string&>()));
        return true;
      }
      if (p.is_array() && !p.empty() &&
          std::all_of(p.begin(), p.end(), [](const Json& t) { return t.is_number_integer(); })) {
        tokens += static_cast<int64_t>(p.size());
        seeds.push_back(Fnv1a(p.dump()));
        return true;
      }
      return false;
    };
    bool ok = prompt != body.end();
    if (ok && prompt->is_array() && !prompt->empty() && !(*prompt)[0].is_number_integer()) {
      for (const auto& p : *prompt) ok = ok && add_prompt(p);
    } else if (ok) {
      ok = add_prompt(*prompt);
    }
    if (!ok) {
      *error = BadRequest(
          "'prompt' must be a string, an array of strings, or an array of token arrays.", "prompt");
      return std::nullopt;
    }
    c.prompt_tokens_ = std::max<int32_t>(1, TokensForChars(chars) + static_cast<int32_t>(tokens));
  }

  c.id_ = kind == CompletionKind::kChat ? "chatcmpl-mock" : "cmpl-mock";
  AppendHex(c.id_, seq, 16);
  const size_t per_prompt = static_cast<size_t>(n.value_or(1));
  c.choices_.resize(seeds.size() * per_prompt);
  for (size_t i = 0; i < c.choices_.size(); ++i) {
    Choice& choice = c.choices_[i];
    uint64_t seed = seeds[i / per_prompt] + i % per_prompt;
    if (tool != nullptr) {
      choice.tool_name = (*tool)["name"].get<std::string>();
      choice.tool_call_id = "call_mock";
      AppendHex(choice.tool_call_id, Fnv1a(choice.tool_name, seq * kMaxChoices + i), 16);
      choice.text = ArgumentsFor(*tool);
      CutText(choice.text, behavior.chunks.value_or(3), &choice.cuts);
      choice.finish_reason = "tool_calls";
      choice.completion_tokens =
          std::max(1, TokensForChars(choice.tool_name.size() + choice.text.size()));
    } else if (!tool_result.empty()) {
      choice.text = tool_result;
      choice.completion_tokens = CountWords(choice.text);
      CutText(choice.text, behavior.chunks.value_or(choice.completion_tokens), &choice.cuts);
    } else {
      FillWords(seed, words, chunks, &choice.text, &choice.cuts);
      choice.completion_tokens = words;
      choice.finish_reason = finish;
    }
    c.steps_ = std::max(c.steps_, choice.cuts.size());
  }

  if (c.stream_) {
    c.event_prefix_ = "{\"id\":\"";
    c.event_prefix_ += c.id_;
    c.event_prefix_ += kind == CompletionKind::kChat ? "\",\"object\":\"chat.completion.chunk\""
                                                     : "\",\"object\":\"text_completion\"";
    c.event_prefix_ += ",\"created\":";
    AppendInt(c.event_prefix_, c.created_);
    c.event_prefix_ += ",\"model\":";
    AppendJsonString(c.event_prefix_, c.model_);
    if (kind == CompletionKind::kChat) {
      c.event_prefix_ += ",\"service_tier\":";
      AppendJsonString(c.event_prefix_, c.service_tier_);
    }
    c.event_prefix_ += ",\"system_fingerprint\":\"fp_mock\",\"choices\":[";
    c.phase_ = kind == CompletionKind::kChat ? Phase::kRole : Phase::kContent;
  }
  return c;
}

void Completion::AppendUsage(std::string& out) const {
  int64_t completion = 0;
  for (const auto& choice : choices_) completion += choice.completion_tokens;
  out += "\"usage\":{\"prompt_tokens\":";
  AppendInt(out, prompt_tokens_);
  out += ",\"completion_tokens\":";
  AppendInt(out, completion);
  out += ",\"total_tokens\":";
  AppendInt(out, prompt_tokens_ + completion);
  if (kind_ == CompletionKind::kChat) {
    out += ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0";
    if (cache_write_tokens_ > 0) {
      out += ",\"cache_write_tokens\":";
      AppendInt(out, cache_write_tokens_);
    }
    out +=
        "},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
        "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}";
  }
  out += '}';
}

void Completion::AppendJson(std::string& out) const {
  const bool chat = kind_ == CompletionKind::kChat;
  out += "{\"id\":\"";
  out += id_;
  out += chat ? "\",\"object\":\"chat.completion\",\"created\":"
              : "\",\"object\":\"text_completion\",\"created\":";
  AppendInt(out, created_);
  out += ",\"model\":";
  AppendJsonString(out, model_);
  out += ",\"choices\":[";
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& choice = choices_[i];
    if (i > 0) out += ',';
    out += "{\"index\":";
    AppendInt(out, static_cast<int64_t>(i));
    if (!chat) {
      out += ",\"text\":";
      AppendJsonString(out, choice.text);
    } else if (choice.tool_call_id.empty()) {
      out += ",\"message\":{\"role\":\"assistant\",\"content\":";
      AppendJsonString(out, choice.text);
      out += ",\"refusal\":null,\"annotations\":[]}";
    } else {
      out += ",\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,";
      out += "\"annotations\":[],\"tool_calls\":[{\"id\":\"";
      out += choice.tool_call_id;
      out += "\",\"type\":\"function\",\"function\":{\"name\":";
      AppendJsonString(out, choice.tool_name);
      out += ",\"arguments\":";
      AppendJsonString(out, choice.text);
      out += "}}]}";
    }
    out += ",\"logprobs\":null,\"finish_reason\":\"";
    out += choice.finish_reason;
    out += "\"}";
  }
  out += "],";
  AppendUsage(out);
  if (chat) {
    out += ",\"service_tier\":";
    AppendJsonString(out, service_tier_);
  }
  out += ",\"system_fingerprint\":\"fp_mock\"}";
}

void Completion::AppendChunkChoiceOpen(std::string& out, size_t index) const {
  out += "data: ";
  out += event_prefix_;
  out += "{\"index\":";
  AppendInt(out, static_cast<int64_t>(index));
}

bool Completion::NextEvent(std::string& out, bool* content) {
  *content = false;
  const bool chat = kind_ == CompletionKind::kChat;
  // Real chunks carry "usage":null until the last when the client asked for usage.
  const std::string_view close = include_usage_ ? "],\"usage\":null}\n\n" : "]}\n\n";
  for (;;) {
    switch (phase_) {
      case Phase::kRole:
        if (choice_ == choices_.size()) {
          phase_ = Phase::kContent;
          choice_ = 0;
          continue;
        } else {
          const Choice& choice = choices_[choice_];
          AppendChunkChoiceOpen(out, choice_++);
          if (choice.tool_call_id.empty()) {
            out += ",\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}";
          } else {
            out += ",\"delta\":{\"role\":\"assistant\",\"content\":null,\"refusal\":null,";
            out += "\"tool_calls\":[{\"index\":0,\"id\":\"";
            out += choice.tool_call_id;
            out += "\",\"type\":\"function\",\"function\":{\"name\":";
            AppendJsonString(out, choice.tool_name);
            out += ",\"arguments\":\"\"}}]}";
          }
          out += ",\"logprobs\":null,\"finish_reason\":null}";
          out += close;
          return true;
        }
      case Phase::kContent: {
        if (step_ == steps_) {
          phase_ = Phase::kFinish;
          choice_ = 0;
          continue;
        }
        if (choice_ == choices_.size()) {
          ++step_;
          choice_ = 0;
          continue;
        }
        const size_t index = choice_++;
        const Choice& choice = choices_[index];
        if (step_ >= choice.cuts.size()) continue;
        const uint32_t begin = step_ == 0 ? 0 : choice.cuts[step_ - 1];
        const std::string_view piece =
            std::string_view(choice.text).substr(begin, choice.cuts[step_] - begin);
        if (piece.empty()) continue;
        *content = index == 0;
        AppendChunkChoiceOpen(out, index);
        if (!chat) {
          out += ",\"text\":";
          AppendJsonString(out, piece);
        } else if (choice.tool_call_id.empty()) {
          out += ",\"delta\":{\"content\":";
          AppendJsonString(out, piece);
          out += '}';
        } else {
          out += ",\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":";
          AppendJsonString(out, piece);
          out += "}}]}";
        }
        out += ",\"logprobs\":null,\"finish_reason\":null}";
        out += close;
        return true;
      }
      case Phase::kFinish:
        if (choice_ == choices_.size()) {
          phase_ = include_usage_ ? Phase::kUsage : Phase::kDone;
          continue;
        } else {
          const size_t index = choice_++;
          AppendChunkChoiceOpen(out, index);
          out += chat ? ",\"delta\":{}" : ",\"text\":\"\"";
          out += ",\"logprobs\":null,\"finish_reason\":\"";
          out += choices_[index].finish_reason;
          out += "\"}";
          out += close;
          return true;
        }
      case Phase::kUsage:
        out += "data: ";
        out += event_prefix_;
        out += "],";
        AppendUsage(out);
        out += "}\n\n";
        phase_ = Phase::kDone;
        return true;
      case Phase::kDone:
        out += "data: [DONE]\n\n";
        phase_ = Phase::kEnd;
        return true;
      case Phase::kEnd:
        return false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Embeddings and models

namespace {

// OpenSSL's encoder (the project's one base64, see common/include/tollgate/encoding.h; the mock
// links nothing from common/).
void AppendBase64(std::string& out, const unsigned char* data, size_t size) {
  const size_t at = out.size();
  out.resize(at + 4 * ((size + 2) / 3) + 1);  // + the terminator EVP_EncodeBlock writes
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data() + at), data,
                                static_cast<int>(size));
  out.resize(at + static_cast<size_t>(n));
}

}  // namespace

bool BuildEmbeddings(const Json& body, std::string_view model_override, std::string* out,
                     ApiError* error) {
  if (!body.is_object()) {
    *error = BadRequest("The request body must be a JSON object.", std::nullopt);
    return false;
  }
  std::string model(model_override);
  if (model.empty()) {
    auto it = body.find("model");
    if (it == body.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
      *error = BadRequest("you must provide a model parameter", "model");
      return false;
    }
    model = it->get<std::string>();
  }
  std::optional<int64_t> dims;
  if (!OptionalInt(body, "dimensions", 1, kMaxEmbeddingDims, &dims, error)) return false;
  bool base64 = false;
  auto format = body.find("encoding_format");
  if (format != body.end() && !format->is_null()) {
    if (*format == "base64") {
      base64 = true;
    } else if (*format != "float") {
      *error = BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format");
      return false;
    }
  }

  // Each input item is hashed; token arrays are hashed through their JSON text.
  std::vector<uint64_t> seeds;
  int64_t tokens = 0;
  auto add_input = [&](const Json& item) {
    if (item.is_string() && !item.get_ref<const std::string&>().empty()) {
      seeds.push_back(Fnv1a(item.get_ref<const std::string&>()));
      tokens += TokensForChars(item.get_ref<const std::string&>().size());
      return true;
    }
    if (item.is_array() && !item.empty() &&
        std::all_of(item.begin(), item.end(),
                    [](const Json& t) { return t.is_number_integer(); })) {
      seeds.push_back(Fnv1a(item.dump()));
      tokens += static_cast<int64_t>(item.size());
      return true;
    }
    return false;
  };
  auto input = body.find("input");
  bool ok = input != body.end();
  if (ok && input->is_array() && !input->empty() && !(*input)[0].is_number_integer()) {
    for (const auto& item : *input) ok = ok && add_input(item);
  } else if (ok) {
    ok = add_input(*input);
  }
  if (!ok) {
    *error = BadRequest(
        "'input' must be a non-empty string, an array of strings, or an array of token arrays.",
        "input");
    return false;
  }

  const int64_t dim = dims.value_or(kDefaultEmbeddingDims);
  std::vector<float> vec(static_cast<size_t>(dim));
  out->clear();
  out->reserve(seeds.size() * static_cast<size_t>(dim) * 12 + 128);
  *out += "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < seeds.size(); ++i) {
    uint64_t state = seeds[i];
    double norm = 0;
    for (auto& v : vec) {
      v = static_cast<float>(static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-52 - 1.0);
      norm += static_cast<double>(v) * v;
    }
    norm = std::sqrt(norm);
    for (auto& v : vec) v = static_cast<float>(v / (norm > 0 ? norm : 1.0));

    if (i > 0) *out += ',';
    *out += "{\"object\":\"embedding\",\"index\":";
    AppendInt(*out, static_cast<int64_t>(i));
    *out += ",\"embedding\":";
    if (base64) {
      std::vector<unsigned char> bytes(vec.size() * 4);
      for (size_t k = 0; k < vec.size(); ++k) {
        uint32_t bits = std::bit_cast<uint32_t>(vec[k]);
        for (int b = 0; b < 4; ++b) bytes[k * 4 + b] = static_cast<unsigned char>(bits >> (8 * b));
      }
      *out += '"';
      AppendBase64(*out, bytes.data(), bytes.size());
      *out += '"';
    } else {
      *out += '[';
      for (size_t k = 0; k < vec.size(); ++k) {
        if (k > 0) *out += ',';
        char buf[32];
        auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), vec[k]);
        out->append(buf, end);
      }
      *out += ']';
    }
    *out += '}';
  }
  *out += "],\"model\":";
  AppendJsonString(*out, model);
  *out += ",\"usage\":{\"prompt_tokens\":";
  AppendInt(*out, tokens);
  *out += ",\"total_tokens\":";
  AppendInt(*out, tokens);
  *out += "}}";
  return true;
}

void AppendModelJson(std::string& out, std::string_view id) {
  out += "{\"id\":";
  AppendJsonString(out, id);
  out += ",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"tollgate-mock\"}";
}

std::string ModelListJson(const std::vector<std::string>& models) {
  std::string out = "{\"object\":\"list\",\"data\":[";
  for (size_t i = 0; i < models.size(); ++i) {
    if (i > 0) out += ',';
    AppendModelJson(out, models[i]);
  }
  out += "]}";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Counters and per-key behaviours

MockState::MockState(std::vector<std::pair<std::string, Behavior>> initial_key_behaviors)
    : initial_key_behaviors_(std::move(initial_key_behaviors)) {
  Reset();
}

std::optional<Behavior> MockState::Admit(std::string_view key, std::string_view path) {
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  auto bump = [](Map<uint64_t>& map, std::string_view name) {
    auto it = map.find(name);
    if (it == map.end()) it = map.emplace(std::string(name), 0).first;
    ++it->second;
  };
  std::lock_guard lock(mu_);
  ++total_;
  bump(by_path_, path);
  if (key.empty()) return std::nullopt;
  bump(by_key_, key);
  if (key_behaviors_.empty()) return std::nullopt;
  auto it = key_behaviors_.find(key);
  if (it == key_behaviors_.end()) return std::nullopt;
  return it->second;
}

void MockState::SetKeyBehavior(std::string_view key, const Behavior& behavior) {
  std::lock_guard lock(mu_);
  if (behavior.Empty()) {
    auto it = key_behaviors_.find(key);
    if (it != key_behaviors_.end()) key_behaviors_.erase(it);
  } else {
    key_behaviors_.insert_or_assign(std::string(key), behavior);
  }
}

Json MockState::StatsJson() const {
  Json stats;
  std::lock_guard lock(mu_);
  stats["total"] = total_;
  stats["by_key"] = Json::object();
  for (const auto& [key, n] : by_key_) stats["by_key"][key] = n;
  stats["by_path"] = Json::object();
  for (const auto& [path, n] : by_path_) stats["by_path"][path] = n;
  stats["in_flight"] = in_flight_.load(std::memory_order_relaxed);
  stats["cancelled"] = cancelled_.load(std::memory_order_relaxed);
  return stats;
}

Json MockState::KeyBehaviorsJson() const {
  Json json = Json::object();
  std::lock_guard lock(mu_);
  for (const auto& [key, behavior] : key_behaviors_) json[key] = BehaviorToJson(behavior);
  return json;
}

bool MockState::SeenCachePrefix(uint64_t hash) {
  std::lock_guard lock(mu_);
  return !cache_prefixes_.insert(hash).second;
}

void MockState::Reset() {
  std::lock_guard lock(mu_);
  cache_prefixes_.clear();
  total_ = 0;
  by_key_.clear();
  by_path_.clear();
  cancelled_.store(0, std::memory_order_relaxed);
  key_behaviors_.clear();
  for (const auto& [key, behavior] : initial_key_behaviors_) {
    if (!behavior.Empty()) key_behaviors_.insert_or_assign(key, behavior);
  }
}

}  // namespace tollgate::mock
