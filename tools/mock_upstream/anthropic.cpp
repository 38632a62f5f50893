// The mock's Anthropic mode: POST /v1/messages and /v1/messages/count_tokens, in the Messages
// API's wire format (README.md, "Anthropic mode"). Same reply rules as the OpenAI mode: words off
// the ring seeded from the last user message, tool calls with placeholder inputs, ceil(bytes/4)
// input tokens.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mock_upstream.h"

namespace tollgate::mock {
namespace {

using Json = nlohmann::json;
using namespace gen;

constexpr int32_t kDefaultWords = 10;
constexpr int32_t kMaxWords = 1 << 20;
constexpr int32_t kMaxToolCalls = 64;

ApiError Invalid(std::string message) {
  ApiError error;
  error.status = 400;
  error.type = "invalid_request_error";
  error.message = std::move(message);
  return error;
}

const Json* Find(const Json& object, const char* name) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(name);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string_view StringField(const Json& object, const char* name) {
  const Json* field = Find(object, name);
  return field != nullptr && field->is_string()
             ? std::string_view(field->get_ref<const std::string&>())
             : std::string_view();
}

// The text a content block stands for in the prompt: text, a tool_result's content, a
// tool_use's name and input; any other block (images, documents...) counts as its JSON.
std::string BlockText(const Json& block) {
  const std::string_view type = StringField(block, "type");
  if (type == "text") return std::string(StringField(block, "text"));
  if (type == "tool_use") {
    const Json* input = Find(block, "input");
    return std::string(StringField(block, "name")) + (input != nullptr ? input->dump() : "");
  }
  if (type == "tool_result") {
    const Json* content = Find(block, "content");
    if (content == nullptr) return "";
    if (content->is_string()) return content->get<std::string>();
    std::string text;
    if (content->is_array()) {
      for (const auto& part : *content) {
        if (!text.empty()) text.push_back(' ');
        text += BlockText(part);
      }
    }
    return text;
  }
  Json copy = block;
  if (copy.is_object()) copy.erase("cache_control");
  return copy.dump();
}

// The prompt as a sequence of pieces in the order the API caches it (tools, system, messages),
// each with whether it carries a cache_control breakpoint.
struct Prompt {
  struct Piece {
    std::string text;
    bool breakpoint = false;
  };
  std::vector<Piece> pieces;
  std::string last_user_text;  // seeds the reply
  std::string tool_results;    // the last user message's tool_result contents
  bool last_is_user = false;
};

// Validates the request's prompt fields as the Messages API does and collects the prompt.
bool ReadPrompt(const Json& body, Prompt* prompt, ApiError* error) {
  if (!body.is_object()) {
    *error = Invalid("The request body must be a JSON object.");
    return false;
  }
  if (StringField(body, "model").empty()) {
    *error = Invalid("model: Field required");
    return false;
  }
  if (const Json* tools = Find(body, "tools")) {
    if (!tools->is_array()) {
      *error = Invalid("tools: Input should be a valid list");
      return false;
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& tool = (*tools)[i];
      if (StringField(tool, "name").empty()) {
        *error = Invalid("tools." + std::to_string(i) + ".name: Field required");
        return false;
      }
      const Json* schema = Find(tool, "input_schema");
      // Server tools (web_search...) have a versioned type and no input_schema.
      if (StringField(tool, "type").empty() && (schema == nullptr || !schema->is_object())) {
        *error = Invalid("tools." + std::to_string(i) + ".input_schema: Field required");
        return false;
      }
      Json copy = tool;
      copy.erase("cache_control");
      prompt->pieces.push_back({copy.dump(), Find(tool, "cache_control") != nullptr});
    }
  }
  if (const Json* system = Find(body, "system")) {
    if (system->is_string()) {
      prompt->pieces.push_back({system->get<std::string>(), false});
    } else if (system->is_array()) {
      for (const auto& block : *system) {
        if (StringField(block, "type") != "text") {
          *error = Invalid("system: each block must be a text block");
          return false;
        }
        prompt->pieces.push_back(
            {std::string(StringField(block, "text")), Find(block, "cache_control") != nullptr});
      }
    } else {
      *error = Invalid("system: Input should be a valid string or a list of text blocks");
      return false;
    }
  }
  const Json* messages = Find(body, "messages");
  if (messages == nullptr) {
    *error = Invalid("messages: Field required");
    return false;
  }
  if (!messages->is_array() || messages->empty()) {
    *error = Invalid("messages: at least one message is required");
    return false;
  }
  std::string_view previous;
  for (size_t i = 0; i < messages->size(); ++i) {
    const Json& message = (*messages)[i];
    const std::string_view role = StringField(message, "role");
    const std::string at = "messages." + std::to_string(i);
    if (role != "user" && role != "assistant") {
      *error = Invalid(at + ".role: Input should be 'user' or 'assistant'");
      return false;
    }
    if (i == 0 && role != "user") {
      *error = Invalid("messages: first message must use the \"user\" role");
      return false;
    }
    if (role == previous) {
      *error = Invalid(
          "messages: roles must alternate between \"user\" and \"assistant\", but found multiple "
          "\"" +
          std::string(role) + "\" roles in a row");
      return false;
    }
    previous = role;
    const Json* content = Find(message, "content");
    const bool last = i + 1 == messages->size();
    std::string text;
    if (content != nullptr && content->is_string()) {
      text = content->get<std::string>();
      prompt->pieces.push_back({text, false});
    } else if (content != nullptr && content->is_array()) {
      for (size_t k = 0; k < content->size(); ++k) {
        const Json& block = (*content)[k];
        const std::string_view type = StringField(block, "type");
        if (type.empty()) {
          *error = Invalid(at + ".content." + std::to_string(k) + ".type: Field required");
          return false;
        }
        if (type == "tool_result" && role != "user") {
          *error = Invalid(at + ".content." + std::to_string(k) +
                           ": tool_result blocks are only allowed in user messages");
          return false;
        }
        std::string block_text = BlockText(block);
        if (type == "text") {
          if (!text.empty()) text.push_back(' ');
          text += block_text;
        } else if (type == "tool_result" && last) {
          if (!prompt->tool_results.empty()) prompt->tool_results.push_back(' ');
          prompt->tool_results += block_text;
        }
        prompt->pieces.push_back({std::move(block_text), Find(block, "cache_control") != nullptr});
      }
    } else {
      *error = Invalid(at + ".content: Field required");
      return false;
    }
    if (last) {
      prompt->last_is_user = role == "user";
      prompt->last_user_text = text.empty() ? prompt->tool_results : text;
    }
  }
  return true;
}

struct PromptTokens {
  int32_t total = 0;
  int32_t cached = 0;  // tokens up to the last breakpoint
  uint64_t prefix_hash = 0;
};

PromptTokens CountPrompt(const Prompt& prompt, std::string_view model) {
  PromptTokens tokens;
  size_t chars = 0;
  size_t prefix_chars = 0;
  uint64_t hash = Fnv1a(model);
  uint64_t prefix_hash = 0;
  for (const auto& piece : prompt.pieces) {
    chars += piece.text.size();
    hash = Fnv1a(piece.text, Fnv1a("\x1e", hash));
    if (piece.breakpoint) {
      prefix_chars = chars;
      prefix_hash = hash;
    }
  }
  tokens.total = std::max(1, TokensForChars(chars));
  tokens.cached = std::min(tokens.total, TokensForChars(prefix_chars));
  tokens.prefix_hash = prefix_hash;
  return tokens;
}

// The tools the reply calls (empty: a text reply), per tool_choice and the tool_calls knob.
bool ToolsToCall(const Json& body, const Behavior& behavior, std::vector<const Json*>* calls,
                 bool* preamble, ApiError* error) {
  const Json* tools = Find(body, "tools");
  std::string_view choice_type = "auto";
  std::string_view wanted;
  bool parallel = true;
  if (const Json* choice = Find(body, "tool_choice")) {
    choice_type = StringField(*choice, "type");
    if (choice_type != "auto" && choice_type != "any" && choice_type != "tool" &&
        choice_type != "none") {
      *error = Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
      return false;
    }
    if (choice_type == "tool") {
      wanted = StringField(*choice, "name");
      if (wanted.empty()) {
        *error = Invalid("tool_choice.name: Field required");
        return false;
      }
    }
    if (const Json* d = Find(*choice, "disable_parallel_tool_use"); d != nullptr && d->is_boolean())
      parallel = !d->get<bool>();
  }
  if (tools == nullptr || tools->empty() || choice_type == "none") return true;
  std::vector<const Json*> candidates;
  for (const auto& tool : *tools) {
    if (wanted.empty() || StringField(tool, "name") == wanted) candidates.push_back(&tool);
  }
  if (candidates.empty()) {
    *error = Invalid("tool_choice: tool '" + std::string(wanted) + "' not found in tools");
    return false;
  }
  const int32_t n = parallel ? std::clamp(behavior.tool_calls.value_or(1), 1, kMaxToolCalls) : 1;
  for (int32_t i = 0; i < n; ++i) calls->push_back(candidates[i % candidates.size()]);
  *preamble = choice_type == "auto";  // forced tool use answers with tool_use blocks only
  return true;
}

void AppendEvent(std::string& out, std::string_view name) {
  out += "event: ";
  out += name;
  out += "\ndata: ";
}

}  // namespace

std::optional<int32_t> AnthropicMessage::CountTokens(const Json& body, ApiError* error) {
  Prompt prompt;
  if (!ReadPrompt(body, &prompt, error)) return std::nullopt;
  return CountPrompt(prompt, StringField(body, "model")).total;
}

std::optional<AnthropicMessage> AnthropicMessage::Plan(const Json& body, const Behavior& behavior,
                                                       uint64_t seq, MockState* cache,
                                                       ApiError* error) {
  Prompt prompt;
  if (!ReadPrompt(body, &prompt, error)) return std::nullopt;
  AnthropicMessage m;
  m.model_ = StringField(body, "model");
  const Json* max_tokens = Find(body, "max_tokens");
  if (max_tokens == nullptr) {
    *error = Invalid("max_tokens: Field required");
    return std::nullopt;
  }
  if (!max_tokens->is_number_integer() || max_tokens->get<int64_t>() < 1) {
    *error = Invalid("max_tokens: Input should be greater than or equal to 1");
    return std::nullopt;
  }
  const int64_t limit = max_tokens->get<int64_t>();
  if (const Json* stream = Find(body, "stream")) {
    if (!stream->is_boolean()) {
      *error = Invalid("stream: Input should be a valid boolean");
      return std::nullopt;
    }
    m.stream_ = stream->get<bool>();
  }
  std::vector<std::string> stop_sequences;
  if (const Json* stops = Find(body, "stop_sequences")) {
    if (!stops->is_array() ||
        !std::all_of(stops->begin(), stops->end(), [](const Json& s) { return s.is_string(); })) {
      *error = Invalid("stop_sequences: Input should be a valid list of strings");
      return std::nullopt;
    }
    for (const auto& stop : *stops) {
      if (!stop.get_ref<const std::string&>().empty())
        stop_sequences.push_back(stop.get<std::string>());
    }
  }
  std::vector<const Json*> calls;
  bool preamble = false;
  if (!ToolsToCall(body, behavior, &calls, &preamble, error)) return std::nullopt;
  // Tools are called on a fresh user turn, not in answer to tool results or after a prefill.
  if (!prompt.last_is_user || !prompt.tool_results.empty()) calls.clear();

  const PromptTokens tokens = CountPrompt(prompt, m.model_);
  m.input_tokens_ = tokens.total;
  if (tokens.cached > 0 && cache != nullptr) {
    (cache->SeenCachePrefix(tokens.prefix_hash) ? m.cache_read_tokens_ : m.cache_creation_tokens_) =
        tokens.cached;
    m.input_tokens_ -= tokens.cached;
  }

  m.id_ = "msg_mock";
  AppendHex(m.id_, seq, 16);
  m.request_id_ = "req_mock";
  AppendHex(m.request_id_, seq, 16);
  if (behavior.error_after) m.error_after_ = *behavior.error_after;
  if (behavior.error_code) m.error_type_ = *behavior.error_code;

  const uint64_t seed = Fnv1a(prompt.last_user_text);
  if (calls.empty()) {
    Block block;
    if (!prompt.tool_results.empty() && prompt.last_is_user) {
      block.text = "The tool returned: " + prompt.tool_results;
      CutText(block.text, behavior.chunks.value_or(CountWords(block.text)), &block.cuts);
    } else {
      int32_t words =
          std::clamp(behavior.size.value_or(behavior.chunks.value_or(kDefaultWords)), 0, kMaxWords);
      if (words > limit) {
        words = static_cast<int32_t>(limit);
        m.stop_reason_ = "max_tokens";
      }
      FillWords(seed, words, behavior.chunks.value_or(words), &block.text, &block.cuts);
    }
    // The earliest stop sequence ends the text, as it would end generation.
    size_t stop_at = std::string::npos;
    for (const auto& stop : stop_sequences) {
      size_t at = block.text.find(stop);
      if (at < stop_at) {
        stop_at = at;
        m.stop_sequence_ = stop;
      }
    }
    if (stop_at != std::string::npos) {
      block.text.resize(stop_at);
      std::erase_if(block.cuts, [&](uint32_t cut) { return cut >= stop_at; });
      if (block.cuts.empty() || block.cuts.back() < stop_at) {
        block.cuts.push_back(static_cast<uint32_t>(stop_at));
      }
      m.stop_reason_ = "stop_sequence";
    }
    m.output_tokens_ = block.text.empty() ? 0 : CountWords(block.text);
    m.blocks_.push_back(std::move(block));
  } else {
    if (preamble) {
      Block text;
      text.text = "I'll use the " + std::string(StringField(*calls[0], "name")) + " tool.";
      CutText(text.text, 2, &text.cuts);
      m.output_tokens_ += CountWords(text.text);
      m.blocks_.push_back(std::move(text));
    }
    for (size_t i = 0; i < calls.size(); ++i) {
      Block block;
      block.tool_name = StringField(*calls[i], "name");
      block.tool_id = "toolu_mock";
      AppendHex(block.tool_id, Fnv1a(block.tool_name, seq * kMaxToolCalls + i), 16);
      const Json* schema = Find(*calls[i], "input_schema");
      block.text = ArgumentsForSchema(schema != nullptr ? *schema : Json());
      // Pieces of a few bytes, cut without regard to JSON tokens, as the real stream does.
      const int32_t pieces = behavior.chunks.value_or(
          std::max<int32_t>(3, static_cast<int32_t>(block.text.size() / 6)));
      for (int32_t k = 1; k < pieces; ++k) {
        const size_t cut = block.text.size() * static_cast<size_t>(k) / static_cast<size_t>(pieces);
        if (cut > 0 && (block.cuts.empty() || cut > block.cuts.back())) {
          block.cuts.push_back(static_cast<uint32_t>(cut));
        }
      }
      block.cuts.push_back(static_cast<uint32_t>(block.text.size()));
      m.output_tokens_ += std::max(1, TokensForChars(block.tool_name.size() + block.text.size()));
      m.blocks_.push_back(std::move(block));
    }
    m.stop_reason_ = "tool_use";
  }
  return m;
}

// "stop_reason":"…","stop_sequence":"…"|null, as the whole message and message_delta carry them.
void AnthropicMessage::AppendStop(std::string& out) const {
  out += "\"stop_reason\":\"";
  out += stop_reason_;
  out += "\",\"stop_sequence\":";
  if (stop_sequence_) {
    AppendJsonString(out, *stop_sequence_);
  } else {
    out += "null";
  }
}

void AnthropicMessage::AppendUsage(std::string& out, int32_t output_tokens) const {
  out += "\"usage\":{\"input_tokens\":";
  AppendInt(out, input_tokens_);
  out += ",\"cache_creation_input_tokens\":";
  AppendInt(out, cache_creation_tokens_);
  out += ",\"cache_read_input_tokens\":";
  AppendInt(out, cache_read_tokens_);
  out += ",\"output_tokens\":";
  AppendInt(out, output_tokens);
  out += ",\"service_tier\":\"standard\"}";
}

void AnthropicMessage::AppendBlockStart(std::string& out, const Block& block) const {
  if (block.tool_id.empty()) {
    out += "{\"type\":\"text\",\"text\":";
    return;
  }
  out += "{\"type\":\"tool_use\",\"id\":\"";
  out += block.tool_id;
  out += "\",\"name\":";
  AppendJsonString(out, block.tool_name);
  out += ",\"input\":";
}

void AnthropicMessage::AppendJson(std::string& out) const {
  out += "{\"id\":\"";
  out += id_;
  out += "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":";
  AppendJsonString(out, model_);
  out += ",\"content\":[";
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (i > 0) out += ',';
    AppendBlockStart(out, blocks_[i]);
    if (blocks_[i].tool_id.empty()) {
      AppendJsonString(out, blocks_[i].text);
    } else {
      out += blocks_[i].text;  // already JSON
    }
    out += '}';
  }
  out += "],";
  AppendStop(out);
  out += ',';
  AppendUsage(out, output_tokens_);
  out += '}';
}

bool AnthropicMessage::NextEvent(std::string& out, bool* content) {
  *content = false;
  if (phase_ != Phase::kEnd && sent_ == error_after_) {
    AppendEvent(out, "error");
    ApiError error = AnthropicErrorForStatus(529, std::nullopt);
    error.type = error_type_;
    AppendAnthropicErrorJson(out, error, request_id_);
    out += "\n\n";
    phase_ = Phase::kEnd;
    return true;
  }
  for (;;) {
    switch (phase_) {
      case Phase::kStart:
        AppendEvent(out, "message_start");
        out += "{\"type\":\"message_start\",\"message\":{\"id\":\"";
        out += id_;
        out += "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":";
        AppendJsonString(out, model_);
        out += ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,";
        AppendUsage(out, 1);
        out += "}}\n\n";
        phase_ = blocks_.empty() ? Phase::kMessageDelta : Phase::kBlockStart;
        break;
      case Phase::kBlockStart:
        AppendEvent(out, "content_block_start");
        out += "{\"type\":\"content_block_start\",\"index\":";
        AppendInt(out, static_cast<int64_t>(block_));
        out += ",\"content_block\":";
        AppendBlockStart(out, blocks_[block_]);
        out += blocks_[block_].tool_id.empty() ? "\"\"}}\n\n" : "{}}}\n\n";
        piece_ = 0;
        phase_ = pinged_ ? Phase::kDelta : Phase::kPing;
        break;
      case Phase::kPing:  // the real stream pings once, after the first block starts
        AppendEvent(out, "ping");
        out += "{\"type\":\"ping\"}\n\n";
        pinged_ = true;
        phase_ = Phase::kDelta;
        break;
      case Phase::kDelta: {
        const Block& block = blocks_[block_];
        if (piece_ == block.cuts.size()) {
          phase_ = Phase::kBlockStop;
          continue;
        }
        const uint32_t begin = piece_ == 0 ? 0 : block.cuts[piece_ - 1];
        const std::string_view piece =
            std::string_view(block.text).substr(begin, block.cuts[piece_] - begin);
        ++piece_;
        if (piece.empty()) continue;
        *content = true;
        AppendEvent(out, "content_block_delta");
        out += "{\"type\":\"content_block_delta\",\"index\":";
        AppendInt(out, static_cast<int64_t>(block_));
        out += block.tool_id.empty()
                   ? ",\"delta\":{\"type\":\"text_delta\",\"text\":"
                   : ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":";
        AppendJsonString(out, piece);
        out += "}}\n\n";
        break;
      }
      case Phase::kBlockStop:
        AppendEvent(out, "content_block_stop");
        out += "{\"type\":\"content_block_stop\",\"index\":";
        AppendInt(out, static_cast<int64_t>(block_));
        out += "}\n\n";
        phase_ = ++block_ < blocks_.size() ? Phase::kBlockStart : Phase::kMessageDelta;
        break;
      case Phase::kMessageDelta:
        AppendEvent(out, "message_delta");
        out += "{\"type\":\"message_delta\",\"delta\":{";
        AppendStop(out);
        out += "},";
        AppendUsage(out, output_tokens_);
        out += "}\n\n";
        phase_ = Phase::kStop;
        break;
      case Phase::kStop:
        AppendEvent(out, "message_stop");
        out += "{\"type\":\"message_stop\"}\n\n";
        phase_ = Phase::kEnd;
        break;
      case Phase::kEnd:
        return false;
    }
    ++sent_;
    return true;
  }
}

}  // namespace tollgate::mock
