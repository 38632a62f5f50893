#include "src/responses_format.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>

#include "tollgate/encoding.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr char kVersion = 1;
constexpr size_t kMacBytes = 16;
constexpr size_t kMaxFieldBytes = 256;  // user id and model; upstream ids have their own bound

std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

void PutString(std::string& out, std::string_view s) {
  out += static_cast<char>(s.size() >> 8);
  out += static_cast<char>(s.size() & 0xff);
  out.append(s);
}

bool GetString(std::string_view& in, std::string& out) {
  if (in.size() < 2) return false;
  const size_t n = (static_cast<unsigned char>(in[0]) << 8) | static_cast<unsigned char>(in[1]);
  in.remove_prefix(2);
  if (in.size() < n) return false;
  out.assign(in.substr(0, n));
  in.remove_prefix(n);
  return true;
}

int64_t IntField(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_number()) return 0;
  return std::max<int64_t>(0, it->get<int64_t>());
}

int64_t StringChars(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_string()) return 0;
  return Utf8Length(it->get_ref<const std::string&>());
}

std::string Dump(const OrderedJson& json) {
  return json.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
}

// "event: <type>\ndata: <json>\n\n", as OpenAI frames every Responses event.
std::string Frame(std::string_view type, std::string_view data) {
  std::string out;
  out.reserve(type.size() + data.size() + 16);
  out.append("event: ").append(type).append("\ndata: ").append(data).append("\n\n");
  return out;
}

}  // namespace

std::optional<std::string> ResponseIdSealer::Seal(const ResponseBinding& b) const {
  if (b.user_id.size() > kMaxFieldBytes || b.model.size() > kMaxFieldBytes ||
      b.upstream_id.empty() || b.upstream_id.size() > kMaxUpstreamResponseIdBytes)
    return std::nullopt;
  std::string payload(1, kVersion);
  for (int shift = 56; shift >= 0; shift -= 8)
    payload += static_cast<char>((static_cast<uint64_t>(b.upstream_key_id) >> shift) & 0xff);
  PutString(payload, b.user_id);
  PutString(payload, b.model);
  PutString(payload, b.upstream_id);
  payload += Hmac(secret_, payload).substr(0, kMacBytes);
  std::string text = Base64Encode(payload);
  // URL-safe (it travels in paths), unpadded.
  std::replace(text.begin(), text.end(), '+', '-');
  std::replace(text.begin(), text.end(), '/', '_');
  while (!text.empty() && text.back() == '=') text.pop_back();
  return std::string(kSealedResponsePrefix) + text;
}

std::optional<ResponseBinding> ResponseIdSealer::Open(std::string_view id) const {
  if (id.size() > kMaxSealedResponseIdBytes || !id.starts_with(kSealedResponsePrefix))
    return std::nullopt;
  const std::string_view whole = id;
  id.remove_prefix(kSealedResponsePrefix.size());
  auto bytes = Base64Decode(id);
  if (!bytes || bytes->size() < 1 + 8 + kMacBytes) return std::nullopt;
  std::string_view payload(bytes->data(), bytes->size() - kMacBytes);
  std::string_view mac(bytes->data() + payload.size(), kMacBytes);
  const std::string expected = Hmac(secret_, payload);
  if (CRYPTO_memcmp(expected.data(), mac.data(), kMacBytes) != 0) return std::nullopt;
  if (payload[0] != kVersion) return std::nullopt;
  payload.remove_prefix(1);
  ResponseBinding b;
  uint64_t key = 0;
  for (int i = 0; i < 8; ++i) key = (key << 8) | static_cast<unsigned char>(payload[i]);
  b.upstream_key_id = static_cast<int64_t>(key);
  payload.remove_prefix(8);
  if (!GetString(payload, b.user_id) || !GetString(payload, b.model) ||
      !GetString(payload, b.upstream_id) || !payload.empty() || b.upstream_id.empty())
    return std::nullopt;
  // One spelling per id (base64 has others: padding, the standard alphabet, unused low bits).
  if (Seal(b) != whole) return std::nullopt;
  return b;
}

std::string DeriveResponseIdSecret(std::string_view service_token) {
  return Hmac(service_token, "tollgate response ids v1");
}

std::optional<std::string> ResponseIdSecretProblem(std::string_view secret) {
  if (secret.size() < 16) return "edge.response_id_secret must be at least 16 characters";
  return std::nullopt;
}

Usage ResponsesUsageFromResponse(const Json& response, int64_t* output_chars) {
  Usage usage;
  if (!response.is_object()) return usage;
  if (auto it = response.find("usage"); it != response.end() && it->is_object()) {
    const Json& u = *it;
    usage.present = true;
    usage.prompt_tokens = IntField(u, "input_tokens");
    // Reasoning tokens are part of output_tokens (output_tokens_details.reasoning_tokens says
    // how many) and are billed as completion tokens.
    usage.completion_tokens = IntField(u, "output_tokens");
    if (auto d = u.find("input_tokens_details"); d != u.end() && d->is_object())
      usage.cached_tokens = std::min(IntField(*d, "cached_tokens"), usage.prompt_tokens);
  }
  if (auto tier = response.find("service_tier");
      tier != response.end() && tier->is_string() && !tier->get_ref<const std::string&>().empty())
    usage.service_tier = tier->get_ref<const std::string&>().substr(0, 64);
  if (output_chars != nullptr) {
    int64_t n = 0;
    if (auto out = response.find("output"); out != response.end() && out->is_array()) {
      for (const auto& item : *out) {
        if (!item.is_object()) continue;
        n += StringChars(item, "arguments") + StringChars(item, "name");
        auto content = item.find("content");
        if (content == item.end() || !content->is_array()) continue;
        for (const auto& part : *content)
          if (part.is_object()) n += StringChars(part, "text") + StringChars(part, "refusal");
      }
    }
    *output_chars = n;
  }
  return usage;
}

namespace {

bool IsBackground(const Json& response) {
  auto it = response.find("background");
  return it != response.end() && it->is_boolean() && it->get<bool>();
}

// What the create of a background response bills: nothing yet (see FinishedBackground).
Usage BackgroundPlaceholder(const Json& response) {
  Usage usage;
  usage.present = true;
  if (auto tier = response.find("service_tier");
      tier != response.end() && tier->is_string() && !tier->get_ref<const std::string&>().empty())
    usage.service_tier = tier->get_ref<const std::string&>().substr(0, 64);
  return usage;
}

}  // namespace

Usage ResponsesUsageFromBody(std::string_view body, int64_t* output_chars) {
  if (output_chars != nullptr) *output_chars = 0;
  if (!JsonDepthWithin(body, kMaxJsonDepth)) return {};
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_object() && IsBackground(json)) return BackgroundPlaceholder(json);
  return ResponsesUsageFromResponse(json, output_chars);
}

std::optional<FinishedBackground> FinishedBackgroundResponse(const Json& response) {
  if (!response.is_object() || !IsBackground(response)) return std::nullopt;
  auto object = response.find("object");
  auto id = response.find("id");
  auto status = response.find("status");
  if (object == response.end() || *object != "response" || id == response.end() ||
      !id->is_string() || id->get_ref<const std::string&>().empty() || status == response.end() ||
      !status->is_string())
    return std::nullopt;
  const std::string& s = status->get_ref<const std::string&>();
  if (s != "completed" && s != "incomplete" && s != "failed" && s != "cancelled")
    return std::nullopt;
  Usage usage = ResponsesUsageFromResponse(response, nullptr);
  if (!usage.present) return std::nullopt;
  return FinishedBackground{id->get<std::string>(), std::move(usage)};
}

std::optional<FinishedBackground> FinishedBackgroundBody(std::string_view body) {
  if (!JsonDepthWithin(body, kMaxJsonDepth)) return std::nullopt;
  return FinishedBackgroundResponse(Json::parse(body, nullptr, /*allow_exceptions=*/false));
}

std::string BackgroundBillingId(int64_t upstream_key_id, std::string_view upstream_id) {
  std::string input = std::to_string(upstream_key_id);
  input += '\n';
  input.append(upstream_id);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(input.data()), input.size(), digest);
  return "resp_bg_" + HexEncode(std::string_view(reinterpret_cast<const char*>(digest), 16));
}

bool SealResponseObject(OrderedJson& response, const SealResponseId& seal) {
  if (!response.is_object()) return false;
  auto object = response.find("object");
  if (object == response.end() || *object != "response") return false;
  for (const char* field : {"id", "previous_response_id"}) {
    auto it = response.find(field);
    if (it == response.end() || !it->is_string()) continue;
    std::string sealed = seal(it->get_ref<const std::string&>());
    if (!sealed.empty()) *it = std::move(sealed);
  }
  return true;
}

std::string SealResponseBody(std::string_view body, const SealResponseId& seal) {
  if (!JsonDepthWithin(body, kMaxJsonDepth)) return std::string(body);
  OrderedJson json = OrderedJson::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!SealResponseObject(json, seal)) return std::string(body);
  return Dump(json);
}

void ResponsesStream::OnEvent(SseEvent& event) {
  if (!event.has_data) return;
  if (!JsonDepthWithin(event.data, kMaxJsonDepth)) return;
  OrderedJson json = OrderedJson::parse(event.data, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return;
  if (auto seq = json.find("sequence_number"); seq != json.end() && seq->is_number_integer())
    last_sequence_ = std::max(last_sequence_, seq->get<int64_t>());
  const std::string type = json.value("type", "");
  if (type == "response.output_text.delta" || type == "response.refusal.delta" ||
      type == "response.function_call_arguments.delta") {
    if (auto d = json.find("delta"); d != json.end() && d->is_string())
      relayed_chars_ += Utf8Length(d->get_ref<const std::string&>());
    return;
  }
  auto response = json.find("response");
  if (response == json.end() || !response->is_object()) return;
  const Json plain(*response);
  if (!background_ && IsBackground(plain)) {
    // Billed when it is seen finished, once (FinishedBackground), never by this stream's record.
    background_ = true;
    usage_ = BackgroundPlaceholder(plain);
  }
  if (type == "response.completed" || type == "response.failed" || type == "response.incomplete") {
    ended_ = true;
    if (background_) {
      finished_background_ = FinishedBackgroundResponse(plain);
    } else {
      Usage usage = ResponsesUsageFromResponse(plain, nullptr);
      if (usage.present) usage_ = usage;
      if (!usage.service_tier.empty()) usage_.service_tier = usage.service_tier;
    }
  }
  if (!SealResponseObject(*response, seal_)) return;
  event.data = Dump(json);
  event.raw = Frame(type, event.data);
}

std::string ResponsesErrorEvent(std::string_view code, std::string_view message,
                                int64_t sequence_number) {
  OrderedJson error{{"type", "error"},
                    {"code", code},
                    {"message", message},
                    {"param", nullptr},
                    {"sequence_number", sequence_number}};
  return Frame("error", Dump(error));
}

}  // namespace tollgate::edge
