#include "src/openai.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cctype>

#include "src/answer_scan.h"
#include "tollgate/saturating.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

// Azure's GA data-plane version, used when the router's attempt names none.
constexpr std::string_view kDefaultAzureApiVersion = "2024-10-21";

// Inline image data in a chat body's content parts (data: URLs), which the prompt estimate
// counts per image rather than per byte, and the number of image parts.
struct ImageParts {
  int64_t data_bytes = 0;
  int64_t count = 0;
};

ImageParts ChatImages(const OrderedJson& body) {
  ImageParts out;
  auto messages = body.find("messages");
  if (messages == body.end() || !messages->is_array()) return out;
  for (const auto& message : *messages) {
    if (!message.is_object()) continue;
    auto content = message.find("content");
    if (content == message.end() || !content->is_array()) continue;
    for (const auto& part : *content) {
      if (!part.is_object()) continue;
      auto image = part.find("image_url");
      if (image == part.end()) continue;
      ++out.count;
      const OrderedJson* url = &*image;
      if (image->is_object()) {
        auto it = image->find("url");
        if (it == image->end()) continue;
        url = &*it;
      }
      if (url->is_string() && url->get_ref<const std::string&>().starts_with("data:"))
        out.data_bytes += static_cast<int64_t>(url->get_ref<const std::string&>().size());
    }
  }
  return out;
}

// The same for a Responses API body: input_image parts of the input items (image_url is a string).
ImageParts ResponsesImages(const OrderedJson& body) {
  ImageParts out;
  auto input = body.find("input");
  if (input == body.end() || !input->is_array()) return out;
  for (const auto& item : *input) {
    if (!item.is_object()) continue;
    auto content = item.find("content");
    if (content == item.end() || !content->is_array()) continue;
    for (const auto& part : *content) {
      if (!part.is_object() || part.value("type", "") != "input_image") continue;
      ++out.count;
      auto url = part.find("image_url");
      if (url != part.end() && url->is_string() &&
          url->get_ref<const std::string&>().starts_with("data:"))
        out.data_bytes += static_cast<int64_t>(url->get_ref<const std::string&>().size());
    }
  }
  return out;
}

int64_t PromptEstimate(Endpoint endpoint, const OrderedJson& body, size_t body_bytes) {
  ImageParts images;
  if (endpoint == Endpoint::kChatCompletions) images = ChatImages(body);
  if (endpoint == Endpoint::kResponses) images = ResponsesImages(body);
  return PromptUpperBound(static_cast<int64_t>(body_bytes), images.count, images.data_bytes);
}

// A positive integer field (absent or null: 0), or why not. Values beyond int64 saturate (they
// are refused as too large later).
std::optional<RequestError> PositiveInt(const OrderedJson& body, const char* name, int64_t max,
                                        int64_t& out) {
  out = 0;
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer())
    return RequestError{std::string("Invalid type for '") + name + "': expected an integer.", name};
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    out = v > static_cast<uint64_t>(kInt64Max) ? kInt64Max : static_cast<int64_t>(v);
  } else {
    out = it->get<int64_t>();
  }
  if (out < 1)
    return RequestError{std::string("Invalid '") + name +
                            "': integer below minimum value. Expected a value >= 1, but got " +
                            std::to_string(out) + " instead.",
                        name};
  if (max > 0 && out > max)
    return RequestError{std::string("Invalid '") + name +
                            "': integer above maximum value. Expected a value <= " +
                            std::to_string(max) + ", but got " + std::to_string(out) + " instead.",
                        name};
  return std::nullopt;
}

// `usage` of a scanned answer (answer_scan.h); nothing when it had no usage object.
void ReadUsage(const AnswerScan& scan, Usage& out) {
  if (!scan.usage_present) return;
  out.present = true;
  out.prompt_tokens = scan.prompt_tokens;
  out.completion_tokens = scan.completion_tokens;
  out.cached_tokens = 0;
  out.cache_write_tokens = 0;
  if (scan.details_present) {
    // Reads and writes are disjoint parts of the prompt.
    out.cached_tokens =
        std::clamp<int64_t>(scan.cached_tokens, 0, std::max<int64_t>(0, out.prompt_tokens));
    out.cache_write_tokens = std::clamp<int64_t>(
        scan.cache_write_tokens, 0, std::max<int64_t>(0, out.prompt_tokens - out.cached_tokens));
  }
}

// Applies the SSE field of one line to `event`.
void ApplyLine(std::string_view line, SseEvent& event) {
  if (line.empty() || line.front() == ':') return;  // comment
  size_t colon = line.find(':');
  std::string_view name = line.substr(0, colon);
  std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (name != "data") return;
  if (event.has_data) event.data += '\n';
  event.data.append(value);
  event.has_data = true;
}

bool IsUnreserved(unsigned char c) {
  return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// What one linear pass over a request body's bytes tells before it is parsed (BodyShape): the
// nesting (as JsonDepthWithin), the keys of every object, where the top-level `model`'s string
// value is, and whether simdjson would read the text exactly as nlohmann does.
struct BodyShape {
  bool too_deep = false;
  // False for the two things simdjson reads differently from nlohmann: a \u escape of a
  // surrogate that is not a high one followed by a low one (nlohmann refuses it), and an
  // integer -0 (nlohmann: a signed integer; simdjson cannot tell it from 0).
  bool simdjson_exact = true;
  bool bom = false;  // a UTF-8 byte-order mark first (nlohmann skips it)
  int64_t keys = 0;  // of every object, repeats included
  // The top-level "model" key (written without escapes) and its string value, quotes included.
  size_t model_at = 0;
  size_t model_len = 0;
};

bool Hex4(std::string_view text, size_t at, uint32_t& out) {
  if (at + 4 > text.size()) return false;
  out = 0;
  for (size_t k = at; k < at + 4; ++k) {
    const int v = HexValue(text[k]);
    if (v < 0) return false;
    out = out << 4 | static_cast<uint32_t>(v);
  }
  return true;
}

// The length of the \u escape at `at` (6, or 12 for a surrogate pair); clears `exact` for one
// simdjson and nlohmann may decode differently (nlohmann then decides).
size_t UnicodeEscape(std::string_view text, size_t at, bool& exact) {
  uint32_t unit = 0;
  if (!Hex4(text, at + 2, unit)) {
    exact = false;
    return 2;
  }
  if (unit < 0xD800 || unit > 0xDFFF) return 6;
  uint32_t low = 0;
  if (unit <= 0xDBFF && at + 12 <= text.size() && text[at + 6] == '\\' && text[at + 7] == 'u' &&
      Hex4(text, at + 8, low) && low >= 0xDC00 && low <= 0xDFFF)
    return 12;
  exact = false;
  return 6;
}

BodyShape ScanBody(std::string_view text) {
  constexpr int max_depth = kMaxJsonDepth;
  BodyShape out;
  out.bom = text.starts_with("\xEF\xBB\xBF");
  const size_t n = text.size();
  // Which open containers are objects; depth counts as JsonDepthWithin does (it may go below
  // zero in a text that is not JSON, which the parse then refuses).
  std::array<bool, max_depth + 1> object{};
  int depth = 0;
  bool expect_key = false;  // the next string is a key
  bool model_next = false;  // the top-level "model" key was just read: its value comes next
  size_t i = 0;
  while (i < n) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ':') {
      ++i;
      continue;
    }
    if (c == '"') {
      const size_t start = i++;
      bool escapes = false;
      while (i < n && text[i] != '"') {
        if (text[i] != '\\') {
          ++i;
        } else if (i + 1 < n && text[i + 1] == 'u') {
          escapes = true;
          i += UnicodeEscape(text, i, out.simdjson_exact);
        } else {
          escapes = true;
          i += 2;  // the escaped character, whatever it is
        }
      }
      i = std::min(i + 1, n);  // past the closing quote
      const std::string_view token = text.substr(start, i - start);
      if (expect_key) {
        expect_key = false;
        ++out.keys;
        model_next = depth == 1 && !escapes && token == "\"model\"";
        continue;
      }
      if (model_next) {
        out.model_at = start;
        out.model_len = token.size();
      }
      model_next = false;
      continue;
    }
    model_next = false;
    if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        out.too_deep = true;
        return out;
      }
      expect_key = c == '{';
      if (depth >= 1) object[static_cast<size_t>(depth)] = expect_key;
    } else if (c == ']' || c == '}') {
      --depth;
      expect_key = false;
    } else if (c == ',') {
      expect_key = depth >= 1 && object[static_cast<size_t>(depth)];
    } else if (c == '-' && i + 1 < n && text[i + 1] == '0' &&
               (i + 2 >= n || (text[i + 2] != '.' && text[i + 2] != 'e' && text[i + 2] != 'E'))) {
      out.simdjson_exact = false;
    }
    ++i;
  }
  return out;
}

// The tree nlohmann's parser builds, from simdjson's DOM: non-negative integers unsigned,
// negative ones signed, a repeated key's last value in its first place.
OrderedJson FromDom(simdjson::dom::element e) {
  namespace dom = simdjson::dom;
  switch (e.type()) {
    case dom::element_type::OBJECT: {
      OrderedJson out(OrderedJson::value_t::object);
      auto& fields = *out.get_ptr<OrderedJson::object_t*>();
      const dom::object object = e.get_object().value_unsafe();
      fields.reserve(object.size());
      for (dom::key_value_pair field : object) {
        auto [it, inserted] = fields.emplace(std::string(field.key), OrderedJson());
        it->second = FromDom(field.value);
      }
      return out;
    }
    case dom::element_type::ARRAY: {
      OrderedJson out(OrderedJson::value_t::array);
      auto& items = *out.get_ptr<OrderedJson::array_t*>();
      const dom::array array = e.get_array().value_unsafe();
      items.reserve(array.size());
      for (dom::element item : array) items.push_back(FromDom(item));
      return out;
    }
    case dom::element_type::STRING:
      return OrderedJson(e.get_string().value_unsafe());
    case dom::element_type::INT64: {
      const int64_t v = e.get_int64().value_unsafe();
      if (v < 0) return OrderedJson(static_cast<OrderedJson::number_integer_t>(v));
      return OrderedJson(static_cast<OrderedJson::number_unsigned_t>(v));
    }
    case dom::element_type::UINT64:
      return OrderedJson(
          static_cast<OrderedJson::number_unsigned_t>(e.get_uint64().value_unsafe()));
    case dom::element_type::DOUBLE:
      return OrderedJson(static_cast<OrderedJson::number_float_t>(e.get_double().value_unsafe()));
    case dom::element_type::BOOL:
      return OrderedJson(e.get_bool().value_unsafe());
    case dom::element_type::NULL_VALUE:
      break;
  }
  return OrderedJson();
}

// Keys of every object in the tree (a repeated key of the text counts once here).
int64_t KeysIn(const OrderedJson& json) {
  int64_t n = 0;
  if (json.is_object()) {
    const auto& fields = *json.get_ptr<const OrderedJson::object_t*>();
    n += static_cast<int64_t>(fields.size());
    for (const auto& field : fields) n += KeysIn(field.second);
  } else if (json.is_array()) {
    for (const auto& value : json) n += KeysIn(value);
  }
  return n;
}

std::optional<RequestError> ParseObject(std::string_view body, OrderedJson& out,
                                        std::string_view api, BodyShape& shape) {
  shape = ScanBody(body);
  if (shape.too_deep)
    return RequestError{"The request body nests arrays or objects more than " +
                            std::to_string(kMaxJsonDepth) + " levels deep.",
                        ""};
  simdjson::dom::element root;
  if (shape.simdjson_exact && ParseDom(body, root)) {
    out = FromDom(root);
  } else {
    out = OrderedJson::parse(body, nullptr, /*allow_exceptions=*/false);
  }
  if (out.is_discarded() || !out.is_object())
    return RequestError{"We could not parse the JSON body of your request. The " +
                            std::string(api) + " expects a JSON object as the request body.",
                        ""};
  return std::nullopt;
}

// A model name as a JSON string, as nlohmann renders it (invalid UTF-8 replaced).
std::string JsonString(std::string_view text) {
  const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
    return c >= 0x20 && c < 0x7F && c != '"' && c != '\\';
  });
  if (!plain) return OrderedJson(text).dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  out += text;
  out += '"';
  return out;
}
}  // namespace

int64_t PromptUpperBound(int64_t body_bytes, int64_t images, int64_t image_data_bytes) {
  const int64_t bytes = std::max<int64_t>(0, body_bytes - image_data_bytes);
  return SatAdd((bytes + kPromptBytesPerToken - 1) / kPromptBytesPerToken,
                SatMul(images, kImageTokens));
}

std::string_view EndpointSuffix(Endpoint endpoint) {
  switch (endpoint) {
    case Endpoint::kChatCompletions:
      return "/chat/completions";
    case Endpoint::kCompletions:
      return "/completions";
    case Endpoint::kEmbeddings:
      return "/embeddings";
    case Endpoint::kMessages:
      return "/v1/messages";
    case Endpoint::kCountTokens:
      return "/v1/messages/count_tokens";
    case Endpoint::kImagesGenerations:
      return "/images/generations";
    case Endpoint::kImagesEdits:
      return "/images/edits";
    case Endpoint::kImagesVariations:
      return "/images/variations";
    case Endpoint::kAudioSpeech:
      return "/audio/speech";
    case Endpoint::kAudioTranscriptions:
      return "/audio/transcriptions";
    case Endpoint::kAudioTranslations:
      return "/audio/translations";
    case Endpoint::kModerations:
      return "/moderations";
    case Endpoint::kResponses:
      return "/responses";
  }
  return "";
}

std::optional<RequestError> ParseJsonObject(std::string_view body, nlohmann::ordered_json& out,
                                            std::string_view api) {
  BodyShape shape;
  return ParseObject(body, out, api, shape);
}

std::variant<ParsedRequest, RequestError> ParseRequest(Endpoint endpoint, std::string_view body,
                                                       std::string_view model_override) {
  ParsedRequest out;
  out.endpoint = endpoint;
  BodyShape shape;
  if (auto error = ParseObject(body, out.body, "OpenAI API", shape)) return *error;
  auto& json = out.body;
  // Whether the tree still says what the client's bytes say (apart from the model).
  bool as_sent = !shape.bom && shape.model_len > 0;
  if (!model_override.empty()) json["model"] = std::string(model_override);
  auto model = json.find("model");
  if (model == json.end() || !model->is_string() || model->get_ref<const std::string&>().empty())
    return RequestError{"You must provide a model parameter.", "model"};
  out.model = model->get<std::string>();

  const char* required = endpoint == Endpoint::kChatCompletions ? "messages"
                         : endpoint == Endpoint::kCompletions   ? "prompt"
                                                                : "input";
  auto field = json.find(required);
  // The Responses API may take its input from previous_response_id, a conversation or a prompt.
  if (endpoint != Endpoint::kResponses && (field == json.end() || field->is_null()))
    return RequestError{std::string("Missing required parameter: '") + required + "'.", required};
  if (endpoint == Endpoint::kChatCompletions && !field->is_array())
    return RequestError{"Invalid type for 'messages': expected an array.", "messages"};

  if (endpoint != Endpoint::kEmbeddings) {
    if (auto stream = json.find("stream"); stream != json.end() && !stream->is_null()) {
      if (!stream->is_boolean())
        return RequestError{"Invalid type for 'stream': expected a boolean.", "stream"};
      out.stream = stream->get<bool>();
    }
  }
  // A Responses stream always ends with the whole response and its usage (response.completed).
  if (out.stream && endpoint != Endpoint::kResponses) {
    auto options = json.find("stream_options");
    if (options == json.end() || options->is_null()) {
      json["stream_options"] = OrderedJson::object();
      options = json.find("stream_options");
      as_sent = false;
    } else if (!options->is_object()) {
      return RequestError{"Invalid type for 'stream_options': expected an object.",
                          "stream_options"};
    }
    auto usage = options->find("include_usage");
    out.client_wants_usage = usage != options->end() && usage->is_boolean() && usage->get<bool>();
    // Usage is always asked for, so every stream can be billed from the provider's own count.
    if (!out.client_wants_usage) as_sent = false;
    (*options)["include_usage"] = true;
  }
  out.prompt_estimate = PromptEstimate(endpoint, json, body.size());
  if (endpoint == Endpoint::kResponses) {
    out.max_tokens_param = "max_output_tokens";
    if (auto error = PositiveInt(json, "max_output_tokens", 0, out.max_tokens)) return *error;
  } else if (endpoint != Endpoint::kEmbeddings) {
    for (const char* name : {"max_tokens", "max_completion_tokens"}) {
      if (endpoint == Endpoint::kCompletions && std::string_view(name) != "max_tokens") continue;
      int64_t value = 0;
      if (auto error = PositiveInt(json, name, 0, value)) return *error;
      if (value > out.max_tokens) {
        out.max_tokens = value;
        out.max_tokens_param = name;
      }
    }
    int64_t n = 0;
    int64_t best_of = 0;
    if (auto error = PositiveInt(json, "n", 128, n)) return *error;
    if (endpoint == Endpoint::kCompletions)
      if (auto error = PositiveInt(json, "best_of", 20, best_of)) return *error;
    out.choices = std::max<int64_t>({1, n, best_of});
  }
  // A repeated key is one entry of the tree (its last value): the text is then rendered anew.
  if (as_sent && shape.keys == KeysIn(json)) {
    out.source.assign(body);
    out.source_model_at = shape.model_at;
    out.source_model_len = shape.model_len;
  }
  return out;
}

std::optional<RequestError> ApplyCompletionBudget(ParsedRequest& request, const ModelLimits& limits,
                                                  int64_t fallback_default) {
  if (request.endpoint == Endpoint::kEmbeddings || request.endpoint == Endpoint::kCountTokens) {
    request.max_tokens = 0;
    return std::nullopt;
  }
  const int64_t ceiling =
      limits.max_output_tokens > 0 ? limits.max_output_tokens : kMaxCompletionTokens;
  if (request.max_tokens > 0) {
    if (request.max_tokens <= ceiling) return std::nullopt;
    return RequestError{
        (request.endpoint == Endpoint::kResponses ? "max_output_tokens" : "max_tokens") +
            std::string(" is too large: ") + std::to_string(request.max_tokens) +
            ". This model supports at most " + std::to_string(ceiling) +
            " completion tokens, whereas you provided " + std::to_string(request.max_tokens) + ".",
        request.max_tokens_param};
  }
  int64_t budget = limits.default_max_tokens > 0 ? limits.default_max_tokens : fallback_default;
  request.max_tokens = std::clamp<int64_t>(budget, 1, ceiling);
  request.send_max_tokens = true;
  return std::nullopt;
}

int64_t WorstCaseCompletionTokens(const ParsedRequest& request) {
  return SatMul(std::max<int64_t>(0, request.max_tokens), std::max<int64_t>(1, request.choices));
}

int64_t WorstCaseTokens(const ParsedRequest& request) {
  return SatAdd(std::max<int64_t>(0, request.prompt_estimate), WorstCaseCompletionTokens(request));
}

std::string RenderUpstreamBody(ParsedRequest& request, std::string_view upstream_model,
                               ProviderKind provider) {
  if (!request.raw_body.empty()) {  // multipart: as sent, the model's value replaced
    const std::string model = upstream_model.empty() ? request.model : std::string(upstream_model);
    std::string out = request.raw_body.substr(0, request.model_at);
    if (request.model_missing)
      out += "--" + request.multipart_boundary +
             "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n" + model + "\r\n";
    else
      out += model;
    out.append(request.raw_body, request.model_at + request.model_len);
    return out;
  }
  const std::string_view model_name =
      upstream_model.empty() ? std::string_view(request.model) : upstream_model;
  request.body["model"] = std::string(model_name);
  if (!request.source.empty() && !request.send_max_tokens) {
    // Nothing but the model changed: the client's bytes, the model's value spliced in.
    const std::string model = JsonString(model_name);
    const std::string_view source = request.source;
    std::string out;
    out.reserve(source.size() - request.source_model_len + model.size());
    out.append(source.substr(0, request.source_model_at));
    out.append(model);
    out.append(source.substr(request.source_model_at + request.source_model_len));
    return out;
  }
  if (request.send_max_tokens && request.endpoint == Endpoint::kResponses) {
    request.body["max_output_tokens"] = request.max_tokens;
  } else if (request.send_max_tokens) {
    // OpenAI's chat API (and Azure's) knows max_completion_tokens (the only one reasoning models
    // accept); legacy completions and OpenAI-compatible servers know max_tokens.
    const bool newer = request.endpoint == Endpoint::kChatCompletions &&
                       provider != ProviderKind::kOpenAiCompatible;
    request.body.erase(newer ? "max_tokens" : "max_completion_tokens");
    request.body[newer ? "max_completion_tokens" : "max_tokens"] = request.max_tokens;
  }
  return request.body.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

bool JsonDepthWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character, whatever it is
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

int64_t EstimateTokens(int64_t characters) { return characters <= 0 ? 0 : (characters + 3) / 4; }

int64_t Utf8Length(std::string_view text) {
  int64_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;  // count every byte but continuations
  return n;
}

Usage UsageFromBody(std::string_view body, int64_t* completion_chars) {
  Usage usage;
  AnswerScan scan;  // one pass, no tree (answer_scan.h)
  if (!ScanAnswer(body, scan)) return usage;
  ReadUsage(scan, usage);
  if (scan.service_tier) usage.service_tier = std::move(*scan.service_tier);
  if (completion_chars != nullptr) *completion_chars = scan.choices_chars;
  return usage;
}

void SseParser::Feed(std::string_view bytes, std::vector<SseEvent>& out) {
  buffer_.append(bytes);
  for (;;) {
    size_t newline = buffer_.find('\n', scanned_);
    if (newline == std::string::npos) return;
    std::string_view line(buffer_.data() + scanned_, newline - scanned_);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) {
      scanned_ = newline + 1;
      continue;
    }
    // A blank line ends the event.
    SseEvent event;
    event.raw = buffer_.substr(0, newline + 1);
    std::string_view rest(event.raw);
    bool any_field = false;
    while (!rest.empty()) {
      size_t end = rest.find('\n');
      std::string_view l = rest.substr(0, end);
      if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
      any_field |= !l.empty();
      ApplyLine(l, event);
      rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
    }
    buffer_.erase(0, newline + 1);
    scanned_ = 0;
    if (any_field) out.push_back(std::move(event));  // stray blank lines are not events
  }
}

StreamRelay::Action StreamRelay::OnEvent(const SseEvent& event) {
  if (!event.has_data) {
    ++forwarded_;
    return Action::kForward;  // comments and keep-alives
  }
  if (event_usage_ != nullptr) {  // not chat chunks: relayed as they came (endpoint_kinds.h)
    if (event.data != "[DONE]") event_usage_(event.data, usage_, relayed_chars_);
    ++forwarded_;
    return Action::kForward;
  }
  if (event.data == "[DONE]") return Action::kDone;
  AnswerScan scan;  // one pass, no tree (answer_scan.h)
  if (!ScanAnswer(event.data, scan)) {
    ++forwarded_;
    return Action::kForward;
  }
  if (scan.service_tier) usage_.service_tier = std::move(*scan.service_tier);
  bool usage_only = false;
  if (scan.usage_present) {
    ReadUsage(scan, usage_);
    usage_only = !scan.choices_present || (scan.choices_array && scan.choices_count == 0);
  }
  relayed_chars_ += scan.choices_chars;
  if (usage_only && !client_wants_usage_) return Action::kDrop;
  ++forwarded_;
  return Action::kForward;
}

std::optional<UpstreamUrl> ParseUpstreamUrl(std::string_view base_url, std::string_view suffix) {
  UpstreamUrl url;
  auto starts = [&](std::string_view prefix) {
    if (base_url.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(base_url[i])) != prefix[i]) return false;
    base_url.remove_prefix(prefix.size());
    return true;
  };
  if (starts("https://")) {
    url.tls = true;
    url.port = 443;
  } else if (starts("http://")) {
    url.tls = false;
    url.port = 80;
  } else {
    return std::nullopt;
  }
  size_t slash = base_url.find_first_of("/?#");
  std::string_view authority = base_url.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : base_url.substr(slash);
  if (authority.find('@') != std::string_view::npos) return std::nullopt;  // no userinfo
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return std::nullopt;
      port = authority.substr(close + 2);
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return std::nullopt;
  if (!port.empty()) {
    int value = 0;
    for (char c : port) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
      value = value * 10 + (c - '0');
      if (value > 65535) return std::nullopt;
    }
    if (value == 0) return std::nullopt;
    url.port = static_cast<uint16_t>(value);
  }
  url.host = std::string(host);
  path = path.substr(0, path.find_first_of("?#"));
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  url.target = std::string(path) + std::string(suffix);
  if (url.target.empty() || url.target.front() != '/') url.target.insert(0, "/");
  return url;
}

std::string UpstreamSuffix(ProviderKind provider, Endpoint endpoint,
                           std::string_view upstream_model, std::string_view api_version) {
  if (provider != ProviderKind::kAzureOpenAi) return std::string(EndpointSuffix(endpoint));
  // Azure's v1 API: the deployment is the body's model, no api-version.
  if (endpoint == Endpoint::kResponses) return "/openai/v1/responses";
  return "/openai/deployments/" + PercentEncode(upstream_model) +
         std::string(EndpointSuffix(endpoint)) + "?api-version=" +
         PercentEncode(api_version.empty() ? kDefaultAzureApiVersion : api_version);
}

std::string QueryParam(std::string_view target, std::string_view name) {
  size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name)
      return eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

std::string PercentEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (IsUnreserved(c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string PercentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    int hi = 0;
    int lo = 0;
    if (text[i] == '%' && i + 2 < text.size() && (hi = HexValue(text[i + 1])) >= 0 &&
        (lo = HexValue(text[i + 2])) >= 0) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

void StreamTranscript::Append(std::string& to, std::string_view piece) {
  if (to.size() + piece.size() > max_chars_) {
    overflowed_ = true;
    piece = piece.substr(0, max_chars_ > to.size() ? max_chars_ - to.size() : 0);
  }
  to.append(piece);
}

void StreamTranscript::OnData(std::string_view data) {
  if (data.empty() || data == "[DONE]") return;
  nlohmann::json chunk = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (!chunk.is_object()) return;
  auto str = [](const nlohmann::json& j, const char* key) -> std::string {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (id_.empty()) id_ = str(chunk, "id");
  if (model_.empty()) model_ = str(chunk, "model");
  if (auto u = chunk.find("usage");
      u != chunk.end() && u->is_object() && JsonDepthWithin(data, kMaxJsonDepth))
    usage_json_ = u->dump();  // dump recurses: only over a bounded depth
  auto choices = chunk.find("choices");
  if (choices == chunk.end() || !choices->is_array()) return;
  for (const auto& c : *choices) {
    if (!c.is_object()) continue;
    int64_t index = c.value("index", int64_t{0});
    Choice& choice = choices_[index];
    if (std::string f = str(c, "finish_reason"); !f.empty()) choice.finish_reason = f;
    if (auto text = c.find("text"); text != c.end() && text->is_string()) {
      choice.text_completion = true;
      Append(choice.content, text->get<std::string>());
    }
    auto delta = c.find("delta");
    if (delta == c.end() || !delta->is_object()) continue;
    Append(choice.content, str(*delta, "content"));
    Append(choice.refusal, str(*delta, "refusal"));
    auto calls = delta->find("tool_calls");
    if (calls == delta->end() || !calls->is_array()) continue;
    for (const auto& call : *calls) {
      if (!call.is_object()) continue;
      ToolCall& t = choice.tool_calls[call.value("index", int64_t{0})];
      if (std::string id = str(call, "id"); !id.empty()) t.id = id;
      if (auto fn = call.find("function"); fn != call.end() && fn->is_object()) {
        if (std::string name = str(*fn, "name"); !name.empty()) t.name = name;
        Append(t.arguments, str(*fn, "arguments"));
      }
    }
  }
}

std::string StreamTranscript::Json() const {
  bool text = !choices_.empty() && choices_.begin()->second.text_completion;
  nlohmann::ordered_json out{{"id", id_},
                             {"object", text ? "text_completion" : "chat.completion"},
                             {"model", model_},
                             {"choices", nlohmann::ordered_json::array()}};
  for (const auto& [index, c] : choices_) {
    nlohmann::ordered_json choice{{"index", index}};
    if (text) {
      choice["text"] = c.content;
    } else {
      nlohmann::ordered_json message{{"role", "assistant"}, {"content", c.content}};
      if (!c.refusal.empty()) message["refusal"] = c.refusal;
      if (!c.tool_calls.empty()) {
        message["tool_calls"] = nlohmann::ordered_json::array();
        for (const auto& [i, t] : c.tool_calls)
          message["tool_calls"].push_back(
              {{"id", t.id},
               {"type", "function"},
               {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
      }
      choice["message"] = std::move(message);
    }
    choice["finish_reason"] = c.finish_reason.empty() ? nlohmann::ordered_json()
                                                      : nlohmann::ordered_json(c.finish_reason);
    out["choices"].push_back(std::move(choice));
  }
  if (!usage_json_.empty())
    out["usage"] = nlohmann::ordered_json::parse(usage_json_, nullptr, false);
  return out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace tollgate::edge
