#include "src/anthropic.h"

#include <algorithm>
#include <array>
#include <utility>

namespace tollgate::edge::anthropic {
namespace {

// Raised inside the request translation, caught once at its top.
[[noreturn]] void Refuse(std::string message, std::string param) {
  throw TranslationRefusal{std::move(message), std::move(param)};
}

std::string Dump(const Json& json) {
  // Replace, never throw, on text that is not UTF-8.
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json TextBlock(std::string text) { return Json{{"type", "text"}, {"text", std::move(text)}}; }

// An image_url part's URL: https → a url source, data:<type>;base64,<data> → a base64 source.
Json ImageBlock(const Json& part, const std::string& param) {
  const Json* image = part.contains("image_url") ? &part["image_url"] : nullptr;
  std::string url;
  if (image && image->is_string()) {
    url = image->get<std::string>();
  } else if (image && image->is_object() && image->contains("url") && (*image)["url"].is_string()) {
    url = (*image)["url"].get<std::string>();
  } else {
    Refuse("An image_url part needs image_url.url.", param);
  }
  if (url.starts_with("https://")) {
    return Json{{"type", "image"}, {"source", {{"type", "url"}, {"url", url}}}};
  }
  if (url.starts_with("data:")) {
    size_t comma = url.find(',');
    std::string_view meta =
        std::string_view(url).substr(5, comma == std::string::npos ? std::string::npos : comma - 5);
    constexpr std::string_view kBase64 = ";base64";
    if (comma == std::string::npos || !meta.ends_with(kBase64)) {
      Refuse("An image data: URL must be base64 encoded.", param);
    }
    std::string media_type(meta.substr(0, meta.size() - kBase64.size()));
    static constexpr std::array<std::string_view, 4> kTypes = {"image/jpeg", "image/png",
                                                               "image/gif", "image/webp"};
    if (std::find(kTypes.begin(), kTypes.end(), media_type) == kTypes.end()) {
      Refuse("Images must be image/jpeg, image/png, image/gif or image/webp for this model.",
             param);
    }
    return Json{
        {"type", "image"},
        {"source",
         {{"type", "base64"}, {"media_type", media_type}, {"data", url.substr(comma + 1)}}}};
  }
  Refuse("An image URL must be https:// or a base64 data: URL for this model.", param);
}

// A prompt-caching breakpoint as Anthropic takes it (`{"type":"ephemeral","ttl":"1h"}`): the
// `cache_control` of an OpenAI-shaped part, message or tool, as LiteLLM and OpenRouter accept
// it, copied as given (Anthropic validates its fields). Absent or null: none.
std::optional<Json> CacheControl(const Json& holder, const std::string& param) {
  if (!holder.is_object()) return std::nullopt;
  auto it = holder.find("cache_control");
  if (it == holder.end() || it->is_null()) return std::nullopt;
  if (!it->is_object() || !it->contains("type") || !(*it)["type"].is_string()) {
    Refuse("cache_control must be an object with a type, such as {\"type\":\"ephemeral\"}.",
           param + ".cache_control");
  }
  return *it;
}

// `holder`'s cache_control, if any, on `block`.
Json WithCacheControl(Json block, const Json& holder, const std::string& param) {
  if (auto cache = CacheControl(holder, param)) block["cache_control"] = std::move(*cache);
  return block;
}

// A message's content as Anthropic blocks. `images`: whether image parts are allowed.
Json ContentBlocks(const Json& content, const std::string& param, bool images) {
  Json blocks = Json::array();
  if (content.is_null()) return blocks;
  if (content.is_string()) {
    if (!content.get_ref<const std::string&>().empty()) blocks.push_back(TextBlock(content));
    return blocks;
  }
  if (!content.is_array()) Refuse("content must be a string or an array of parts.", param);
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string part_param = param + "[" + std::to_string(i) + "]";
    std::string type = part.is_object() && part.contains("type") && part["type"].is_string()
                           ? part["type"].get<std::string>()
                           : "";
    if (type == "text" || type == "refusal") {
      const char* field = type == "text" ? "text" : "refusal";
      if (!part.contains(field) || !part[field].is_string()) {
        Refuse("A " + type + " part needs a string " + field + ".", param);
      }
      // An empty text block is refused by Anthropic (and cannot carry a breakpoint): dropped.
      if (!part[field].get_ref<const std::string&>().empty())
        blocks.push_back(WithCacheControl(TextBlock(part[field]), part, part_param));
    } else if (type == "image_url" && images) {
      blocks.push_back(WithCacheControl(ImageBlock(part, param), part, part_param));
    } else {
      Refuse("Content parts of type '" + type + "' are not supported for this model.", param);
    }
  }
  return blocks;
}

Json ToolUseBlock(const Json& call, const std::string& param) {
  if (!call.is_object() || call.value("type", "function") != "function" ||
      !call.contains("function") || !call["function"].is_object()) {
    Refuse("Only function tool calls are supported for this model.", param);
  }
  const Json& function = call["function"];
  if (!call.contains("id") || !call["id"].is_string() || !function.contains("name") ||
      !function["name"].is_string()) {
    Refuse("A tool call needs an id and a function name.", param);
  }
  Json input = Json::object();
  if (function.contains("arguments") && !function["arguments"].is_null()) {
    if (!function["arguments"].is_string()) Refuse("Tool call arguments must be a string.", param);
    const auto& text = function["arguments"].get_ref<const std::string&>();
    if (!text.empty()) {
      input = Json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (input.is_discarded() || !input.is_object()) {
        Refuse("Tool call arguments must be a JSON object.", param + ".function.arguments");
      }
    }
  }
  return Json{
      {"type", "tool_use"}, {"id", call["id"]}, {"name", function["name"]}, {"input", input}};
}

Json ToolResultBlock(const Json& message, const std::string& param) {
  if (!message.contains("tool_call_id") || !message["tool_call_id"].is_string()) {
    Refuse("A tool message needs tool_call_id.", param + ".tool_call_id");
  }
  Json block{{"type", "tool_result"}, {"tool_use_id", message["tool_call_id"]}};
  const Json content = message.value("content", Json());
  if (content.is_string()) {
    block["content"] = content;
  } else {
    Json blocks = ContentBlocks(content, param + ".content", /*images=*/false);
    if (!blocks.empty()) block["content"] = std::move(blocks);
  }
  return block;
}

Json ToolChoice(const Json& choice, bool has_tools) {
  Json out;
  if (choice.is_string()) {
    const auto& mode = choice.get_ref<const std::string&>();
    if (mode == "auto") {
      out = {{"type", "auto"}};
    } else if (mode == "none") {
      out = {{"type", "none"}};
    } else if (mode == "required") {
      out = {{"type", "any"}};
    } else {
      Refuse("tool_choice must be auto, none, required or a named function.", "tool_choice");
    }
  } else if (choice.is_object() && choice.value("type", "") == "function" &&
             choice.contains("function") && choice["function"].is_object() &&
             choice["function"].contains("name") && choice["function"]["name"].is_string()) {
    out = {{"type", "tool"}, {"name", choice["function"]["name"]}};
  } else {
    Refuse("tool_choice must be auto, none, required or a named function.", "tool_choice");
  }
  if (!has_tools && (out["type"] == "any" || out["type"] == "tool")) {
    Refuse("tool_choice requires tools.", "tool_choice");
  }
  return out;
}

Json Tools(const Json& tools) {
  if (!tools.is_array()) Refuse("tools must be an array.", "tools");
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    std::string param = "tools[" + std::to_string(i) + "]";
    if (!tool.is_object() || tool.value("type", "") != "function" || !tool.contains("function") ||
        !tool["function"].is_object()) {
      Refuse("Only function tools are supported for this model.", param);
    }
    const Json& function = tool["function"];
    if (!function.contains("name") || !function["name"].is_string()) {
      Refuse("A function tool needs a name.", param + ".function.name");
    }
    Json converted{{"name", function["name"]}};
    if (function.contains("description") && function["description"].is_string()) {
      converted["description"] = function["description"];
    }
    // Anthropic requires an object schema; OpenAI's parameters may be absent (no arguments).
    converted["input_schema"] =
        function.contains("parameters") && function["parameters"].is_object()
            ? function["parameters"]
            : Json{{"type", "object"}, {"properties", Json::object()}};
    out.push_back(WithCacheControl(std::move(converted), tool, param));
  }
  return out;
}

int64_t PositiveInt(const Json& body, const char* field) {
  const Json& value = body[field];
  if (!value.is_number_integer() || value.get<int64_t>() < 1) {
    Refuse(std::string(field) + " must be a positive integer.", field);
  }
  return value.get<int64_t>();
}

bool Present(const Json& body, const char* field) {
  return body.contains(field) && !body[field].is_null();
}

Json TranslateRequest(const Json& body, std::string upstream_model, int64_t default_max_tokens) {
  if (!body.is_object()) Refuse("The body must be a JSON object.", "");
  if (!body.contains("messages") || !body["messages"].is_array()) {
    Refuse("messages must be an array.", "messages");
  }
  // Refused: what would silently change the answer's shape.
  if (Present(body, "n") && !(body["n"].is_number_integer() && body["n"].get<int64_t>() == 1)) {
    Refuse("n > 1 is not supported for this model.", "n");
  }
  if (Present(body, "logprobs") && body["logprobs"] != false) {
    Refuse("logprobs is not supported for this model.", "logprobs");
  }
  if (Present(body, "top_logprobs")) {
    Refuse("top_logprobs is not supported for this model.", "top_logprobs");
  }
  if (Present(body, "response_format") && !(body["response_format"].is_object() &&
                                            body["response_format"].value("type", "") == "text")) {
    Refuse("response_format is not supported for this model.", "response_format");
  }
  if (Present(body, "audio")) Refuse("Audio output is not supported for this model.", "audio");

  Json out = Json::object();
  out["model"] = std::move(upstream_model);

  Json system = Json::array();
  int system_messages = 0;
  bool system_strings = true;
  Json messages = Json::array();
  auto append = [&messages](const std::string& role, Json blocks) {
    if (blocks.empty()) return;
    if (!messages.empty() && messages.back()["role"] == role) {
      for (Json& block : blocks) messages.back()["content"].push_back(std::move(block));
    } else {
      messages.push_back(Json{{"role", role}, {"content", std::move(blocks)}});
    }
  };

  // A message's own cache_control (LiteLLM's form) marks its last block.
  auto mark_last = [](Json& blocks, const Json& message, const std::string& param) {
    if (auto cache = CacheControl(message, param); cache && !blocks.empty())
      blocks.back()["cache_control"] = std::move(*cache);
  };

  const Json& input = body["messages"];
  for (size_t i = 0; i < input.size(); ++i) {
    const Json& message = input[i];
    std::string param = "messages[" + std::to_string(i) + "]";
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      Refuse("Each message needs a role.", param + ".role");
    }
    const auto& role = message["role"].get_ref<const std::string&>();
    const Json content = message.value("content", Json());
    if (role == "system" || role == "developer") {
      ++system_messages;
      system_strings &= content.is_string();
      Json blocks = ContentBlocks(content, param + ".content", /*images=*/false);
      mark_last(blocks, message, param);
      for (Json& block : blocks) system.push_back(std::move(block));
    } else if (role == "user") {
      Json blocks = ContentBlocks(content, param + ".content", /*images=*/true);
      mark_last(blocks, message, param);
      append("user", std::move(blocks));
    } else if (role == "assistant") {
      Json blocks = ContentBlocks(content, param + ".content", /*images=*/false);
      if (message.contains("tool_calls") && !message["tool_calls"].is_null()) {
        const Json& calls = message["tool_calls"];
        if (!calls.is_array()) Refuse("tool_calls must be an array.", param + ".tool_calls");
        for (size_t c = 0; c < calls.size(); ++c) {
          blocks.push_back(
              ToolUseBlock(calls[c], param + ".tool_calls[" + std::to_string(c) + "]"));
        }
      }
      mark_last(blocks, message, param);
      append("assistant", std::move(blocks));
    } else if (role == "tool") {
      append("user",
             Json::array({WithCacheControl(ToolResultBlock(message, param), message, param)}));
    } else {
      Refuse("Messages of role '" + role + "' are not supported for this model.", param + ".role");
    }
  }
  // One text block is sent as a plain string, unless it carries a cache breakpoint.
  auto plain = [](const Json& blocks) {
    return blocks.size() == 1 && blocks[0]["type"] == "text" &&
           !blocks[0].contains("cache_control");
  };
  for (Json& message : messages) {
    Json& blocks = message["content"];
    if (plain(blocks)) blocks = blocks[0]["text"];
  }
  if (!system.empty()) {
    out["system"] =
        system_messages == 1 && system_strings && plain(system) ? system[0]["text"] : system;
  }
  out["messages"] = std::move(messages);

  if (Present(body, "max_completion_tokens")) {
    out["max_tokens"] = PositiveInt(body, "max_completion_tokens");
  } else if (Present(body, "max_tokens")) {
    out["max_tokens"] = PositiveInt(body, "max_tokens");
  } else {
    out["max_tokens"] = default_max_tokens;
  }

  if (Present(body, "stop")) {
    const Json& stop = body["stop"];
    if (stop.is_string()) {
      out["stop_sequences"] = Json::array({stop});
    } else if (stop.is_array() &&
               std::all_of(stop.begin(), stop.end(), [](const Json& s) { return s.is_string(); })) {
      if (!stop.empty()) out["stop_sequences"] = stop;
    } else {
      Refuse("stop must be a string or an array of strings.", "stop");
    }
  }
  if (Present(body, "temperature")) {
    if (!body["temperature"].is_number()) Refuse("temperature must be a number.", "temperature");
    out["temperature"] = std::clamp(body["temperature"].get<double>(), 0.0, 1.0);
  }
  if (Present(body, "top_p")) {
    if (!body["top_p"].is_number()) Refuse("top_p must be a number.", "top_p");
    out["top_p"] = body["top_p"];
  }
  if (Present(body, "user")) {
    if (!body["user"].is_string()) Refuse("user must be a string.", "user");
    out["metadata"] = {{"user_id", body["user"]}};
  }
  if (Present(body, "stream")) {
    if (!body["stream"].is_boolean()) Refuse("stream must be a boolean.", "stream");
    if (body["stream"] == true) out["stream"] = true;
  }

  bool has_tools = Present(body, "tools") && !(body["tools"].is_array() && body["tools"].empty());
  if (has_tools) out["tools"] = Tools(body["tools"]);
  std::optional<Json> choice;
  if (Present(body, "tool_choice")) choice = ToolChoice(body["tool_choice"], has_tools);
  if (Present(body, "parallel_tool_calls")) {
    if (!body["parallel_tool_calls"].is_boolean()) {
      Refuse("parallel_tool_calls must be a boolean.", "parallel_tool_calls");
    }
    if (body["parallel_tool_calls"] == false && has_tools) {
      if (!choice) choice = Json{{"type", "auto"}};
      if ((*choice)["type"] != "none") (*choice)["disable_parallel_tool_use"] = true;
    }
  }
  // Without tools, auto and none mean what no tool_choice means (Anthropic refuses tool_choice
  // without tools).
  if (choice && has_tools) out["tool_choice"] = std::move(*choice);
  return out;
}

int64_t Count(const Json& usage, const char* field) {
  if (!usage.is_object() || !usage.contains(field) || !usage[field].is_number_integer()) return 0;
  return std::max<int64_t>(0, usage[field].get<int64_t>());
}

std::string StringField(const Json& object, const char* field) {
  if (!object.is_object() || !object.contains(field) || !object[field].is_string()) return "";
  return object[field].get<std::string>();
}

struct ErrorRow {
  std::string_view anthropic_type;
  int client_status;
  ErrorCode code;  // OpenAI type and code
};

constexpr std::array<ErrorRow, 8> kErrors = {{
    {"invalid_request_error", 400, ErrorCode::kInvalidRequest},
    {"authentication_error", 401, ErrorCode::kInvalidApiKey},
    {"permission_error", 403, ErrorCode::kPermissionDenied},
    {"not_found_error", 404, ErrorCode::kNotFound},
    {"request_too_large", 413, ErrorCode::kRequestTooLarge},
    {"rate_limit_error", 429, ErrorCode::kRateLimited},
    {"api_error", 500, ErrorCode::kUpstreamError},
    {"overloaded_error", 503, ErrorCode::kServiceUnavailable},
}};

const ErrorRow* RowForType(std::string_view type) {
  for (const ErrorRow& row : kErrors) {
    if (row.anthropic_type == type) return &row;
  }
  return nullptr;
}

const ErrorRow& RowForStatus(int status) {
  switch (status) {
    case 401:
      return *RowForType("authentication_error");
    case 403:
      return *RowForType("permission_error");
    case 404:
      return *RowForType("not_found_error");
    case 413:
      return *RowForType("request_too_large");
    case 429:
      return *RowForType("rate_limit_error");
    case 503:
    case 529:
      return *RowForType("overloaded_error");
    default:
      return *RowForType(status >= 500 ? "api_error" : "invalid_request_error");
  }
}

}  // namespace

std::variant<Json, TranslationError> TranslateOrRefuse(const std::function<Json()>& translate) {
  try {
    return translate();
  } catch (TranslationRefusal& refusal) {
    return TranslationError{ErrorCode::kInvalidRequest, std::move(refusal.message),
                            std::move(refusal.param)};
  } catch (const Json::exception& e) {
    return TranslationError{
        ErrorCode::kInvalidRequest,
        std::string("The request cannot be translated for this model: ") + e.what(), ""};
  }
}

std::variant<Json, TranslationError> ToMessagesRequest(const Json& openai_chat_body,
                                                       std::string upstream_model,
                                                       int64_t default_max_tokens) {
  return TranslateOrRefuse([&] {
    return TranslateRequest(openai_chat_body, std::move(upstream_model), default_max_tokens);
  });
}

MessagesUsage UsageFromMessages(const Json& usage) {
  MessagesUsage out;
  out.present = usage.is_object();
  out.input_tokens = Count(usage, "input_tokens");
  out.output_tokens = Count(usage, "output_tokens");
  out.cache_read_input_tokens = Count(usage, "cache_read_input_tokens");
  out.cache_creation_input_tokens = Count(usage, "cache_creation_input_tokens");
  return out;
}

Json UsageToOpenAi(const MessagesUsage& usage) {
  int64_t prompt =
      usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens;
  return Json{{"prompt_tokens", prompt},
              {"completion_tokens", usage.output_tokens},
              {"total_tokens", prompt + usage.output_tokens},
              {"prompt_tokens_details",
               {{"cached_tokens", usage.cache_read_input_tokens},
                {"cache_write_tokens", usage.cache_creation_input_tokens}}}};
}

Usage ToEdgeUsage(const MessagesUsage& usage) {
  Usage out;
  out.present = usage.present;
  out.prompt_tokens =
      usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens;
  out.completion_tokens = usage.output_tokens;
  out.cached_tokens = usage.cache_read_input_tokens;
  out.cache_write_tokens = usage.cache_creation_input_tokens;
  return out;
}

Json FinishReason(const Json& stop_reason) {
  if (!stop_reason.is_string()) return nullptr;
  const auto& reason = stop_reason.get_ref<const std::string&>();
  if (reason == "max_tokens") return "length";
  if (reason == "tool_use") return "tool_calls";
  if (reason == "refusal") return "content_filter";
  return "stop";  // end_turn, stop_sequence, pause_turn and any new reason
}

ChatCompletion ToChatCompletion(const Json& response, std::string model_shown, int64_t created) {
  ChatCompletion out;
  std::string text;
  bool has_text = false;
  Json tool_calls = Json::array();
  if (response.is_object() && response.contains("content") && response["content"].is_array()) {
    for (const Json& block : response["content"]) {
      std::string type = StringField(block, "type");
      if (type == "text") {
        text += StringField(block, "text");
        has_text = true;
      } else if (type == "tool_use") {
        tool_calls.push_back(Json{
            {"id", StringField(block, "id")},
            {"type", "function"},
            {"function",
             {{"name", StringField(block, "name")},
              {"arguments", Dump(block.contains("input") ? block["input"] : Json::object())}}}});
      }
    }
  }
  Json message{
      {"role", "assistant"}, {"content", has_text ? Json(text) : Json()}, {"refusal", nullptr}};
  if (!tool_calls.empty()) message["tool_calls"] = std::move(tool_calls);
  std::string model = model_shown.empty() ? StringField(response, "model") : model_shown;
  out.usage = UsageFromMessages(response.is_object() ? response.value("usage", Json()) : Json());
  out.body = Json{
      {"id", StringField(response, "id")},
      {"object", "chat.completion"},
      {"created", created},
      {"model", model},
      {"choices",
       Json::array({Json{{"index", 0},
                         {"message", std::move(message)},
                         {"logprobs", nullptr},
                         {"finish_reason",
                          FinishReason(response.is_object() ? response.value("stop_reason", Json())
                                                            : Json())}}})},
      {"usage", UsageToOpenAi(out.usage)}};
  return out;
}

UpstreamError MessagesErrorToOpenAi(int http_status, const Json& body) {
  UpstreamError out;
  Json error = body.is_object() && body.contains("error") ? body["error"] : Json();
  out.anthropic_type = StringField(error, "type");
  const ErrorRow* row = RowForType(out.anthropic_type);
  if (!row) row = &RowForStatus(http_status);
  out.client_status = row->client_status;
  out.outcome_status = http_status == 529 ? 503 : http_status;
  if (out.outcome_status < 400) out.outcome_status = row->client_status;  // an error in a 200
  int s = out.outcome_status;
  out.retryable = s == 429 || s >= 500 || s == 401 || s == 403;
  std::string message = StringField(error, "message");
  if (message.empty()) {
    message = "The upstream provider answered with HTTP " + std::to_string(http_status) + ".";
  }
  const ErrorInfo& info = Describe(row->code);
  out.body = Json{{"error",
                   {{"message", message},
                    {"type", std::string(info.type)},
                    {"param", nullptr},
                    {"code", info.code.empty() ? Json() : Json(std::string(info.code))}}}};
  return out;
}

StreamTranslator::StreamTranslator(std::string model_shown, bool include_usage, int64_t created)
    : model_shown_(std::move(model_shown)), include_usage_(include_usage), created_(created) {}

std::vector<std::string> StreamTranslator::Feed(std::string_view bytes) {
  std::vector<std::string> out;
  if (error_) return out;
  events_.clear();
  sse_.Feed(bytes, events_);
  for (const SseEvent& event : events_) {
    if (error_) break;
    if (!event.has_data) continue;  // comments
    Json json = Json::parse(event.data, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      error_ = StreamError{"api_error", "The upstream provider sent a malformed event."};
      break;
    }
    OnEvent(json, out);
  }
  return out;
}

std::string StreamTranslator::Finish() { return "data: [DONE]\n\n"; }

std::string StreamTranslator::Chunk(Json delta, Json finish_reason) const {
  Json chunk{{"id", id_},
             {"object", "chat.completion.chunk"},
             {"created", created_},
             {"model", model_shown_.empty() ? model_ : model_shown_},
             {"choices", Json::array({Json{{"index", 0},
                                           {"delta", std::move(delta)},
                                           {"logprobs", nullptr},
                                           {"finish_reason", std::move(finish_reason)}}})}};
  return "data: " + Dump(chunk) + "\n\n";
}

void StreamTranslator::OnEvent(const Json& event, std::vector<std::string>& out) {
  std::string type = StringField(event, "type");
  if (type == "message_start") {
    const Json message = event.value("message", Json::object());
    id_ = StringField(message, "id");
    model_ = StringField(message, "model");
    usage_ = UsageFromMessages(message.value("usage", Json()));
    if (!started_) out.push_back(Chunk(Json{{"role", "assistant"}, {"content", ""}}));
    started_ = true;
  } else if (type == "content_block_start") {
    const Json block = event.value("content_block", Json::object());
    if (StringField(block, "type") != "tool_use") return;
    int64_t index = tool_calls_++;
    if (event.contains("index") && event["index"].is_number_integer()) {
      tool_index_[event["index"].get<int64_t>()] = index;
    }
    out.push_back(Chunk(Json{
        {"tool_calls",
         Json::array(
             {Json{{"index", index},
                   {"id", StringField(block, "id")},
                   {"type", "function"},
                   {"function", {{"name", StringField(block, "name")}, {"arguments", ""}}}}})}}));
  } else if (type == "content_block_delta") {
    const Json delta = event.value("delta", Json::object());
    std::string delta_type = StringField(delta, "type");
    if (delta_type == "text_delta") {
      std::string text = StringField(delta, "text");
      if (!text.empty()) out.push_back(Chunk(Json{{"content", std::move(text)}}));
    } else if (delta_type == "input_json_delta") {
      std::string partial = StringField(delta, "partial_json");
      if (partial.empty() || !event.contains("index") || !event["index"].is_number_integer())
        return;
      auto it = tool_index_.find(event["index"].get<int64_t>());
      if (it == tool_index_.end()) return;  // a delta of a block that was not a tool_use
      out.push_back(Chunk(Json{
          {"tool_calls",
           Json::array({Json{{"index", it->second}, {"function", {{"arguments", partial}}}}})}}));
    }
  } else if (type == "message_delta") {
    // message_delta's usage is cumulative; input and cache counts appear there on newer API
    // versions and then replace message_start's.
    if (event.contains("usage") && event["usage"].is_object()) {
      const Json& usage = event["usage"];
      usage_.present = true;
      if (usage.contains("output_tokens")) usage_.output_tokens = Count(usage, "output_tokens");
      if (usage.contains("input_tokens")) usage_.input_tokens = Count(usage, "input_tokens");
      if (usage.contains("cache_read_input_tokens")) {
        usage_.cache_read_input_tokens = Count(usage, "cache_read_input_tokens");
      }
      if (usage.contains("cache_creation_input_tokens")) {
        usage_.cache_creation_input_tokens = Count(usage, "cache_creation_input_tokens");
      }
    }
    const Json delta = event.value("delta", Json::object());
    Json reason = FinishReason(delta.value("stop_reason", Json()));
    if (reason.is_string()) {
      finish_reason_ = reason.get<std::string>();
      out.push_back(Chunk(Json::object(), std::move(reason)));
    }
  } else if (type == "message_stop") {
    finished_ = true;
    if (include_usage_) {
      Json chunk{{"id", id_},
                 {"object", "chat.completion.chunk"},
                 {"created", created_},
                 {"model", model_shown_.empty() ? model_ : model_shown_},
                 {"choices", Json::array()},
                 {"usage", UsageToOpenAi(usage_)}};
      out.push_back("data: " + Dump(chunk) + "\n\n");
    }
  } else if (type == "error") {
    const Json error = event.value("error", Json::object());
    error_ = StreamError{StringField(error, "type"), StringField(error, "message")};
  }
  // ping, content_block_stop, thinking and signature deltas, unknown events: nothing.
}

}  // namespace tollgate::edge::anthropic
