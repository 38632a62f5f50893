#include "src/anthropic_front.h"

#include <algorithm>
#include <utility>

namespace tollgate::edge::anthropic {
namespace {

using OrderedJson = nlohmann::ordered_json;

// Raised inside the request translation, caught once at its top.
[[noreturn]] void Refuse(std::string message, std::string param = "") {
  throw TranslationRefusal{std::move(message), std::move(param)};
}

std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string Str(const Json& object, const char* field) {
  if (!object.is_object() || !object.contains(field) || !object[field].is_string()) return "";
  return object[field].get<std::string>();
}

int64_t Int(const Json& object, const char* field) {
  if (!object.is_object() || !object.contains(field) || !object[field].is_number_integer())
    return 0;
  return std::max<int64_t>(0, object[field].get<int64_t>());
}

bool Present(const Json& body, const char* field) {
  return body.contains(field) && !body[field].is_null();
}

// One Anthropic event as it goes on the wire.
std::string Event(std::string_view name, const Json& data) {
  return "event: " + std::string(name) + "\ndata: " + Dump(data) + "\n\n";
}

// Image blocks (and their inline base64 bytes) of a Messages body, for the prompt estimate.
void CountImages(const OrderedJson& blocks, int64_t& images, int64_t& data_bytes) {
  if (!blocks.is_array()) return;
  for (const auto& block : blocks) {
    if (!block.is_object()) continue;
    auto type = block.find("type");
    if (type == block.end() || !type->is_string()) continue;
    if (*type == "image") {
      ++images;
      auto source = block.find("source");
      if (source != block.end() && source->is_object()) {
        auto data = source->find("data");
        if (data != source->end() && data->is_string())
          data_bytes += static_cast<int64_t>(data->get_ref<const std::string&>().size());
      }
    } else if (*type == "tool_result") {
      auto content = block.find("content");
      if (content != block.end()) CountImages(*content, images, data_bytes);
    }
  }
}

// The text of text blocks (a string, or an array of {"type":"text"} blocks), joined.
std::string JoinedText(const Json& content, const std::string& param, const char* what) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    Refuse(std::string(what) + " must be a string or an array of blocks.", param);
  std::string out;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& block = content[i];
    if (Str(block, "type") != "text" || !block.contains("text") || !block["text"].is_string()) {
      Refuse(std::string(what) + " supports only text blocks for this model.",
             param + "." + std::to_string(i));
    }
    if (!out.empty()) out += "\n";
    out += block["text"].get<std::string>();
  }
  return out;
}

// An image block as an image_url part: base64 → a data: URL, url → the URL.
Json ImagePart(const Json& block, const std::string& param) {
  const Json source = block.value("source", Json::object());
  std::string type = Str(source, "type");
  std::string url;
  if (type == "base64") {
    std::string media = Str(source, "media_type");
    if (media.empty() || !source.contains("data") || !source["data"].is_string())
      Refuse("An image's base64 source needs media_type and data.", param + ".source");
    url = "data:" + media + ";base64," + source["data"].get<std::string>();
  } else if (type == "url") {
    url = Str(source, "url");
    if (url.empty()) Refuse("An image's url source needs a url.", param + ".source");
  } else {
    Refuse("Image sources of type '" + type + "' are not supported for this model.",
           param + ".source");
  }
  return Json{{"type", "image_url"}, {"image_url", {{"url", std::move(url)}}}};
}

// A user turn: its tool_result blocks become `tool` messages (first, as OpenAI wants them right
// after the assistant's tool_calls), the rest one user message.
void UserTurn(const Json& content, const std::string& param, Json& out) {
  if (content.is_string()) {
    out.push_back(Json{{"role", "user"}, {"content", content}});
    return;
  }
  if (!content.is_array()) Refuse("content must be a string or an array of blocks.", param);
  Json parts = Json::array();
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& block = content[i];
    std::string bparam = param + "." + std::to_string(i);
    std::string type = Str(block, "type");
    if (type == "text") {
      if (!block.contains("text") || !block["text"].is_string())
        Refuse("A text block needs a string text.", bparam);
      parts.push_back(Json{{"type", "text"}, {"text", block["text"]}});
    } else if (type == "image") {
      parts.push_back(ImagePart(block, bparam));
    } else if (type == "tool_result") {
      std::string id = Str(block, "tool_use_id");
      if (id.empty()) Refuse("A tool_result block needs tool_use_id.", bparam + ".tool_use_id");
      std::string text;
      if (block.contains("content") && !block["content"].is_null())
        text = JoinedText(block["content"], bparam + ".content", "tool_result content");
      if (block.value("is_error", false) == true) text = "Error: " + text;
      out.push_back(Json{{"role", "tool"}, {"tool_call_id", id}, {"content", std::move(text)}});
    } else {
      Refuse("Content blocks of type '" + type + "' are not supported for this model.", bparam);
    }
  }
  if (parts.empty()) return;
  if (parts.size() == 1 && parts[0]["type"] == "text") {
    out.push_back(Json{{"role", "user"}, {"content", parts[0]["text"]}});
  } else {
    out.push_back(Json{{"role", "user"}, {"content", std::move(parts)}});
  }
}

// An assistant turn: text blocks joined into content, tool_use blocks as tool_calls.
void AssistantTurn(const Json& content, const std::string& param, Json& out) {
  if (content.is_string()) {
    out.push_back(Json{{"role", "assistant"}, {"content", content}});
    return;
  }
  if (!content.is_array()) Refuse("content must be a string or an array of blocks.", param);
  std::string text;
  bool has_text = false;
  Json calls = Json::array();
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& block = content[i];
    std::string bparam = param + "." + std::to_string(i);
    std::string type = Str(block, "type");
    if (type == "text") {
      if (!block.contains("text") || !block["text"].is_string())
        Refuse("A text block needs a string text.", bparam);
      text += block["text"].get<std::string>();
      has_text = true;
    } else if (type == "tool_use") {
      std::string id = Str(block, "id");
      std::string name = Str(block, "name");
      if (id.empty() || name.empty()) Refuse("A tool_use block needs an id and a name.", bparam);
      calls.push_back(
          Json{{"id", id},
               {"type", "function"},
               {"function",
                {{"name", name}, {"arguments", Dump(block.value("input", Json::object()))}}}});
    } else if (type == "thinking" || type == "redacted_thinking") {
      // The model's own reasoning from an Anthropic answer: nothing to send to another model.
    } else {
      Refuse("Content blocks of type '" + type + "' are not supported for this model.", bparam);
    }
  }
  Json message{{"role", "assistant"}, {"content", has_text ? Json(text) : Json()}};
  if (!calls.empty()) message["tool_calls"] = std::move(calls);
  if (has_text || message.contains("tool_calls")) out.push_back(std::move(message));
}

Json Tools(const Json& tools) {
  if (!tools.is_array()) Refuse("tools: Input should be a valid list", "tools");
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    std::string param = "tools." + std::to_string(i);
    std::string type = Str(tool, "type");
    if (!tool.is_object() || !(type.empty() || type == "custom"))
      Refuse("Tools of type '" + type + "' are not supported for this model.", param);
    std::string name = Str(tool, "name");
    if (name.empty()) Refuse("A tool needs a name.", param + ".name");
    Json function{{"name", name}};
    if (tool.contains("description") && tool["description"].is_string())
      function["description"] = tool["description"];
    function["parameters"] = tool.value("input_schema", Json{{"type", "object"}});
    out.push_back(Json{{"type", "function"}, {"function", std::move(function)}});
  }
  return out;
}

Json TranslateRequest(const Json& body, std::string upstream_model, bool max_completion_tokens) {
  Json messages = Json::array();
  if (Present(body, "system")) {
    std::string system = JoinedText(body["system"], "system", "system");
    if (!system.empty()) messages.push_back(Json{{"role", "system"}, {"content", system}});
  }
  const Json& turns = body["messages"];
  for (size_t i = 0; i < turns.size(); ++i) {
    const Json& turn = turns[i];
    std::string param = "messages." + std::to_string(i);
    std::string role = Str(turn, "role");
    if (!turn.is_object() || !turn.contains("content"))
      Refuse("A message needs a role and content.", param);
    if (role == "user") {
      UserTurn(turn["content"], param + ".content", messages);
    } else if (role == "assistant") {
      AssistantTurn(turn["content"], param + ".content", messages);
    } else {
      Refuse("messages: roles must be user or assistant.", param + ".role");
    }
  }
  Json out{{"model", std::move(upstream_model)}, {"messages", std::move(messages)}};
  if (Present(body, "max_tokens"))
    out[max_completion_tokens ? "max_completion_tokens" : "max_tokens"] = body["max_tokens"];
  if (Present(body, "stop_sequences")) {
    const Json& stop = body["stop_sequences"];
    if (!stop.is_array() ||
        !std::all_of(stop.begin(), stop.end(), [](const Json& s) { return s.is_string(); }))
      Refuse("stop_sequences must be an array of strings.", "stop_sequences");
    if (!stop.empty()) out["stop"] = stop;
  }
  for (const char* field : {"temperature", "top_p"}) {
    if (!Present(body, field)) continue;
    if (!body[field].is_number()) Refuse(std::string(field) + " must be a number.", field);
    out[field] = body[field];
  }
  if (Present(body, "metadata") && body["metadata"].is_object() &&
      body["metadata"].contains("user_id") && body["metadata"]["user_id"].is_string())
    out["user"] = body["metadata"]["user_id"];
  if (body.value("stream", false) == true) {
    out["stream"] = true;
    out["stream_options"] = {{"include_usage", true}};
  }
  bool has_tools = Present(body, "tools") && !(body["tools"].is_array() && body["tools"].empty());
  if (has_tools) out["tools"] = Tools(body["tools"]);
  if (Present(body, "tool_choice")) {
    const Json& choice = body["tool_choice"];
    std::string type = Str(choice, "type");
    Json openai;
    if (type == "auto") {
      openai = "auto";
    } else if (type == "any") {
      openai = "required";
    } else if (type == "none") {
      openai = "none";
    } else if (type == "tool" && !Str(choice, "name").empty()) {
      openai = Json{{"type", "function"}, {"function", {{"name", Str(choice, "name")}}}};
    } else {
      Refuse("tool_choice.type must be auto, any, tool (with a name) or none.", "tool_choice");
    }
    if (has_tools) {
      out["tool_choice"] = std::move(openai);
      if (choice.value("disable_parallel_tool_use", false) == true && type != "none")
        out["parallel_tool_calls"] = false;
    }
  }
  return out;
}

struct ErrorRow {
  int status;
  std::string_view type;
};

ErrorRow RowForStatus(int status) {
  switch (status) {
    case 400:
      return {400, "invalid_request_error"};
    case 401:
      return {401, "authentication_error"};
    case 403:
      return {403, "permission_error"};
    case 404:
      return {404, "not_found_error"};
    case 413:
      return {413, "request_too_large"};
    case 429:
      return {429, "rate_limit_error"};
    case 503:
    case 529:
      return {529, "overloaded_error"};
    default:
      if (status >= 500) return {status, "api_error"};
      return {status >= 400 ? status : 500, status >= 400 ? "invalid_request_error" : "api_error"};
  }
}

// Anthropic's error object, `type` first as the API writes it.
std::string ErrorText(std::string_view type, std::string_view message) {
  OrderedJson error{{"type", "error"}, {"error", {{"type", type}, {"message", message}}}};
  return error.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

}  // namespace

std::variant<ParsedRequest, RequestError> ParseMessagesRequest(Endpoint endpoint,
                                                               std::string_view body) {
  ParsedRequest out;
  out.endpoint = endpoint;
  if (auto error = ParseJsonObject(body, out.body, "Messages API")) return *error;
  auto& json = out.body;
  auto model = json.find("model");
  if (model == json.end() || !model->is_string() || model->get_ref<const std::string&>().empty())
    return RequestError{"model: Field required", "model"};
  out.model = model->get<std::string>();
  auto messages = json.find("messages");
  if (messages == json.end() || messages->is_null())
    return RequestError{"messages: Field required", "messages"};
  if (!messages->is_array())
    return RequestError{"messages: Input should be a valid list", "messages"};
  auto max_tokens = json.find("max_tokens");
  const bool has_max = max_tokens != json.end() && !max_tokens->is_null();
  if (has_max) {
    if (!max_tokens->is_number_integer())
      return RequestError{"max_tokens: Input should be a valid integer", "max_tokens"};
    if (max_tokens->is_number_unsigned() &&
        max_tokens->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      out.max_tokens = INT64_MAX;
    else
      out.max_tokens = max_tokens->get<int64_t>();
    if (out.max_tokens < 1)
      return RequestError{"max_tokens: Input should be greater than or equal to 1", "max_tokens"};
  } else if (endpoint == Endpoint::kMessages) {
    return RequestError{"max_tokens: Field required", "max_tokens"};
  }
  if (endpoint == Endpoint::kCountTokens) out.max_tokens = 0;  // nothing is generated
  if (auto stream = json.find("stream"); stream != json.end() && !stream->is_null()) {
    if (!stream->is_boolean())
      return RequestError{"stream: Input should be a valid boolean", "stream"};
    out.stream = endpoint == Endpoint::kMessages && stream->get<bool>();
  }
  int64_t images = 0;
  int64_t data_bytes = 0;
  for (const auto& message : *messages)
    if (message.is_object())
      if (auto content = message.find("content"); content != message.end())
        CountImages(*content, images, data_bytes);
  out.prompt_estimate = PromptUpperBound(static_cast<int64_t>(body.size()), images, data_bytes);
  return out;
}

std::variant<Json, TranslationError> ToChatRequest(const Json& messages_body,
                                                   std::string upstream_model,
                                                   bool max_completion_tokens) {
  return TranslateOrRefuse([&] {
    return TranslateRequest(messages_body, std::move(upstream_model), max_completion_tokens);
  });
}

Json StopReason(const Json& finish_reason, const Json& matched_stop, const Json& stop_sequences) {
  if (!finish_reason.is_string()) return nullptr;
  const auto& reason = finish_reason.get_ref<const std::string&>();
  if (reason == "length") return "max_tokens";
  if (reason == "tool_calls" || reason == "function_call") return "tool_use";
  if (reason == "content_filter") return "refusal";
  if (matched_stop.is_string() && stop_sequences.is_array() &&
      std::find(stop_sequences.begin(), stop_sequences.end(), matched_stop) != stop_sequences.end())
    return "stop_sequence";
  return "end_turn";
}

Usage UsageFromMessageBody(std::string_view body, int64_t* completion_chars) {
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return {};
  if (completion_chars != nullptr && json.contains("content") && json["content"].is_array()) {
    for (const Json& block : json["content"]) {
      if (!block.is_object()) continue;
      if (block.contains("text") && block["text"].is_string())
        *completion_chars += Utf8Length(block["text"].get<std::string>());
      if (block.contains("input")) *completion_chars += Utf8Length(Dump(block["input"]));
    }
  }
  if (!json.contains("usage") || !json["usage"].is_object()) return {};
  return ToEdgeUsage(UsageFromMessages(json["usage"]));
}

Json UsageFromOpenAi(const Usage& usage) {
  const int64_t cached = std::clamp<int64_t>(usage.cached_tokens, 0, usage.prompt_tokens);
  return Json{{"input_tokens", usage.prompt_tokens - cached},
              {"output_tokens", usage.completion_tokens},
              {"cache_creation_input_tokens", 0},
              {"cache_read_input_tokens", cached}};
}

Json ToMessage(const Json& chat, std::string model_shown, const Json& stop_sequences) {
  Json content = Json::array();
  Json choice;
  if (chat.is_object() && chat.contains("choices") && chat["choices"].is_array() &&
      !chat["choices"].empty())
    choice = chat["choices"][0];
  const Json message = choice.is_object() ? choice.value("message", Json::object()) : Json();
  std::string text = Str(message, "content");
  if (text.empty()) text = Str(message, "refusal");
  if (!text.empty()) content.push_back(Json{{"type", "text"}, {"text", text}});
  if (message.is_object() && message.contains("tool_calls") && message["tool_calls"].is_array()) {
    for (const Json& call : message["tool_calls"]) {
      const Json function = call.is_object() ? call.value("function", Json::object()) : Json();
      Json input = Json::parse(Str(function, "arguments"), nullptr, false);
      if (input.is_discarded() || !input.is_object()) input = Json::object();
      content.push_back(Json{{"type", "tool_use"},
                             {"id", Str(call, "id")},
                             {"name", Str(function, "name")},
                             {"input", std::move(input)}});
    }
  }
  Json matched = choice.is_object() ? choice.value("stop_reason", Json()) : Json();
  Json reason = StopReason(choice.is_object() ? choice.value("finish_reason", Json()) : Json(),
                           matched, stop_sequences);
  Usage usage;
  if (chat.is_object() && chat.contains("usage") && chat["usage"].is_object()) {
    const Json& u = chat["usage"];
    usage.prompt_tokens = Int(u, "prompt_tokens");
    usage.completion_tokens = Int(u, "completion_tokens");
    if (u.contains("prompt_tokens_details"))
      usage.cached_tokens = Int(u["prompt_tokens_details"], "cached_tokens");
  }
  return Json{{"id", Str(chat, "id")},
              {"type", "message"},
              {"role", "assistant"},
              {"model", model_shown.empty() ? Str(chat, "model") : model_shown},
              {"content", std::move(content)},
              {"stop_reason", reason},
              {"stop_sequence", reason == "stop_sequence" ? matched : Json()},
              {"usage", UsageFromOpenAi(usage)}};
}

ClientError ChatErrorToMessages(int http_status, const Json& body) {
  ErrorRow row = RowForStatus(http_status);
  std::string message;
  if (body.is_object() && body.contains("error")) message = Str(body["error"], "message");
  if (message.empty())
    message = "The upstream provider answered with HTTP " + std::to_string(http_status) + ".";
  return ClientError{row.status, ErrorText(row.type, message)};
}

std::string_view ErrorType(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidApiKey:
    case ErrorCode::kUnauthenticated:
      return "authentication_error";
    case ErrorCode::kPermissionDenied:
      return "permission_error";
    case ErrorCode::kNotFound:
    case ErrorCode::kModelNotFound:
      return "not_found_error";
    case ErrorCode::kRequestTooLarge:
      return "request_too_large";
    case ErrorCode::kRateLimited:
    case ErrorCode::kInsufficientQuota:
      return "rate_limit_error";
    case ErrorCode::kNoHealthyUpstream:
    case ErrorCode::kServiceUnavailable:
    case ErrorCode::kOverloaded:
      return "overloaded_error";
    case ErrorCode::kUpstreamError:
    case ErrorCode::kUpstreamTimeout:
    case ErrorCode::kInternal:
      return "api_error";
    case ErrorCode::kInvalidRequest:
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition:
      return "invalid_request_error";
  }
  return "api_error";
}

int ErrorStatus(ErrorCode code) {
  return ErrorType(code) == "overloaded_error" ? 529 : Describe(code).http;
}

std::string ErrorBody(ErrorCode code, std::string_view message) {
  return ErrorText(ErrorType(code), message);
}

std::string ErrorEvent(std::string_view body) {
  return "event: error\ndata: " + std::string(body) + "\n\n";
}

std::string ErrorEvent(const StreamError& error) {
  return ErrorEvent(ErrorText(error.type, error.message));
}

bool MessagesStreamMeter::OnEvent(const SseEvent& event) {
  if (!event.has_data || error_) return !error_;
  Json json = Json::parse(event.data, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    error_ = StreamError{"api_error", "The upstream provider sent a malformed event."};
    error_event_ = ErrorEvent(ErrorText(error_->type, error_->message));
    return false;
  }
  std::string type = Str(json, "type");
  if (type == "message_start") {
    usage_ = UsageFromMessages(json.value("message", Json::object()).value("usage", Json()));
  } else if (type == "message_delta" && json.contains("usage") && json["usage"].is_object()) {
    const Json& u = json["usage"];
    usage_.present = true;
    // Cumulative: a count present replaces message_start's.
    if (u.contains("output_tokens")) usage_.output_tokens = Int(u, "output_tokens");
    if (u.contains("input_tokens")) usage_.input_tokens = Int(u, "input_tokens");
    if (u.contains("cache_read_input_tokens"))
      usage_.cache_read_input_tokens = Int(u, "cache_read_input_tokens");
    if (u.contains("cache_creation_input_tokens"))
      usage_.cache_creation_input_tokens = Int(u, "cache_creation_input_tokens");
  } else if (type == "content_block_delta") {
    const Json delta = json.value("delta", Json::object());
    chars_ += Utf8Length(Str(delta, "text")) + Utf8Length(Str(delta, "partial_json"));
  } else if (type == "error") {
    const Json error = json.value("error", Json::object());
    error_ = StreamError{Str(error, "type"), Str(error, "message")};
    error_event_ = event.raw;
    return false;
  }
  return true;
}

ChunkTranslator::ChunkTranslator(std::string model_shown, Json stop_sequences)
    : model_shown_(std::move(model_shown)), stop_sequences_(std::move(stop_sequences)) {}

std::vector<std::string> ChunkTranslator::Feed(std::string_view bytes) {
  std::vector<std::string> out;
  if (error_ || finished_) return out;
  events_.clear();
  sse_.Feed(bytes, events_);
  for (const SseEvent& event : events_) {
    if (error_ || finished_) break;
    if (!event.has_data) continue;
    if (event.data == "[DONE]") {
      if (!started_) Start(Json::object(), out);
      End(out);
      break;
    }
    Json json = Json::parse(event.data, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
      error_ = StreamError{"api_error", "The upstream provider sent a malformed event."};
      break;
    }
    if (json.contains("error")) {
      const Json error = json["error"].is_object() ? json["error"] : Json::object();
      std::string type = Str(error, "type");
      // OpenAI's error types mid-stream; anything else is the provider's own failure.
      const char* anthropic_type = type == "invalid_request_error" ? "invalid_request_error"
                                   : type == "requests" || type == "tokens" ? "rate_limit_error"
                                                                            : "api_error";
      error_ = StreamError{anthropic_type, Str(error, "message")};
      break;
    }
    OnChunk(json, out);
  }
  return out;
}

std::string ChunkTranslator::Finish() {
  if (finished_ || error_) return "";
  std::vector<std::string> out;
  if (!started_) Start(Json::object(), out);
  End(out);
  std::string all;
  for (auto& e : out) all += e;
  return all;
}

void ChunkTranslator::Start(const Json& chunk, std::vector<std::string>& out) {
  started_ = true;
  std::string model = model_shown_.empty() ? Str(chunk, "model") : model_shown_;
  out.push_back(
      Event("message_start", Json{{"type", "message_start"},
                                  {"message",
                                   {{"id", Str(chunk, "id")},
                                    {"type", "message"},
                                    {"role", "assistant"},
                                    {"model", model},
                                    {"content", Json::array()},
                                    {"stop_reason", nullptr},
                                    {"stop_sequence", nullptr},
                                    {"usage", {{"input_tokens", 0}, {"output_tokens", 0}}}}}}));
}

void ChunkTranslator::CloseBlock(std::vector<std::string>& out) {
  if (open_block_ < 0) return;
  out.push_back(
      Event("content_block_stop", Json{{"type", "content_block_stop"}, {"index", open_block_}}));
  open_block_ = -1;
  open_is_text_ = false;
}

void ChunkTranslator::End(std::vector<std::string>& out) {
  CloseBlock(out);
  Json reason = StopReason(finish_reason_.is_null() ? Json("stop") : finish_reason_, matched_stop_,
                           stop_sequences_);
  Json usage = UsageFromOpenAi(usage_);
  out.push_back(
      Event("message_delta",
            Json{{"type", "message_delta"},
                 {"delta",
                  {{"stop_reason", reason},
                   {"stop_sequence", reason == "stop_sequence" ? matched_stop_ : Json()}}},
                 {"usage", std::move(usage)}}));
  out.push_back(Event("message_stop", Json{{"type", "message_stop"}}));
  finished_ = true;
}

void ChunkTranslator::OnChunk(const Json& chunk, std::vector<std::string>& out) {
  if (!started_) Start(chunk, out);
  if (chunk.contains("usage") && chunk["usage"].is_object()) {
    const Json& u = chunk["usage"];
    usage_.present = true;
    usage_.prompt_tokens = Int(u, "prompt_tokens");
    usage_.completion_tokens = Int(u, "completion_tokens");
    usage_.cached_tokens =
        u.contains("prompt_tokens_details") ? Int(u["prompt_tokens_details"], "cached_tokens") : 0;
  }
  if (!chunk.contains("choices") || !chunk["choices"].is_array()) return;
  for (const Json& choice : chunk["choices"]) {
    if (!choice.is_object() || choice.value("index", 0) != 0) continue;  // Anthropic has no n
    const Json delta = choice.value("delta", Json::object());
    std::string text = Str(delta, "content");
    if (text.empty()) text = Str(delta, "refusal");
    if (!text.empty()) {
      if (!open_is_text_) {
        CloseBlock(out);
        open_block_ = next_block_++;
        open_is_text_ = true;
        out.push_back(Event("content_block_start",
                            Json{{"type", "content_block_start"},
                                 {"index", open_block_},
                                 {"content_block", {{"type", "text"}, {"text", ""}}}}));
      }
      chars_ += Utf8Length(text);
      out.push_back(Event("content_block_delta",
                          Json{{"type", "content_block_delta"},
                               {"index", open_block_},
                               {"delta", {{"type", "text_delta"}, {"text", std::move(text)}}}}));
    }
    if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
      for (const Json& call : delta["tool_calls"]) {
        if (!call.is_object()) continue;
        const int64_t index = call.value("index", int64_t{0});
        const Json function = call.value("function", Json::object());
        auto it = tool_block_.find(index);
        if (it == tool_block_.end()) {
          CloseBlock(out);
          open_block_ = next_block_++;
          it = tool_block_.emplace(index, open_block_).first;
          chars_ += Utf8Length(Str(function, "name"));
          out.push_back(Event("content_block_start", Json{{"type", "content_block_start"},
                                                          {"index", open_block_},
                                                          {"content_block",
                                                           {{"type", "tool_use"},
                                                            {"id", Str(call, "id")},
                                                            {"name", Str(function, "name")},
                                                            {"input", Json::object()}}}}));
        }
        std::string arguments = Str(function, "arguments");
        if (arguments.empty()) continue;
        chars_ += Utf8Length(arguments);
        // Parallel calls arrive one after the other; should one resume after another began, its
        // pieces still carry its own block index.
        out.push_back(
            Event("content_block_delta",
                  Json{{"type", "content_block_delta"},
                       {"index", it->second},
                       {"delta", {{"type", "input_json_delta"}, {"partial_json", arguments}}}}));
      }
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
      finish_reason_ = choice["finish_reason"];
      if (choice.contains("stop_reason")) matched_stop_ = choice["stop_reason"];
    }
  }
}

}  // namespace tollgate::edge::anthropic
