#include "src/endpoint_kinds.h"

#include <algorithm>
#include <array>
#include <cmath>

#include <nlohmann/json.hpp>

#include "src/anthropic_front.h"
#include "src/responses_format.h"
#include "tollgate/saturating.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

int64_t Int(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_number()) return 0;
  if (it->is_number_float()) {
    const double v = it->get<double>();
    return v > 0 && v < 9e18 ? static_cast<int64_t>(v) : 0;
  }
  if (it->is_number_unsigned())
    return static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), INT64_MAX));
  return std::max<int64_t>(0, it->get<int64_t>());
}

// Seconds (a JSON number) as milliseconds, rounded up; -1 when absent or not a number.
int64_t SecondsMs(const Json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_number()) return -1;
  const double seconds = it->get<double>();
  if (!(seconds >= 0) || seconds > 1e9) return -1;
  // 8.47 s is 8470.000000000001 ms in binary floating point: not a millisecond more.
  return static_cast<int64_t>(std::ceil(seconds * 1000 - 1e-6));
}

std::string Text(const Json& object, const char* name) {
  auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>().substr(0, 64) : "";
}

// `usage` of the non-chat answers: input/output tokens (images, speech, transcriptions) or, for
// a transcription billed by duration, {"type":"duration","seconds"}.
void ReadMediaUsage(const Json& usage, Usage& out) {
  if (!usage.is_object()) return;
  if (Text(usage, "type") == "duration") {
    out.audio_ms = SecondsMs(usage, "seconds");
    return;
  }
  if (!usage.contains("input_tokens") && !usage.contains("output_tokens")) return;
  out.present = true;
  out.prompt_tokens = Int(usage, "input_tokens");
  out.completion_tokens = Int(usage, "output_tokens");
  out.cached_tokens = 0;
  for (const char* details : {"input_tokens_details", "input_token_details"})
    if (auto it = usage.find(details); it != usage.end() && it->is_object())
      out.cached_tokens = std::clamp<int64_t>(Int(*it, "cached_tokens"), 0, out.prompt_tokens);
}

int64_t TextChars(const Json& object, const char* name) {
  auto it = object.find(name);
  return it != object.end() && it->is_string() ? Utf8Length(it->get_ref<const std::string&>()) : 0;
}

// An images answer (ImagesResponse): usage for the GPT image models, the images returned, and
// the size and quality the answer reports.
Usage ImagesWhole(std::string_view body, int64_t* completion_chars) {
  Usage usage;
  if (completion_chars != nullptr) *completion_chars = 0;
  auto json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return usage;
  if (auto it = json.find("usage"); it != json.end()) ReadMediaUsage(*it, usage);
  if (auto it = json.find("data"); it != json.end() && it->is_array())
    usage.images = static_cast<int64_t>(it->size());
  usage.image_size = Text(json, "size");
  usage.image_quality = Text(json, "quality");
  return usage;
}

// Speech is binary audio: nothing to read (its characters are the request's).
Usage NoUsage(std::string_view, int64_t* completion_chars) {
  if (completion_chars != nullptr) *completion_chars = 0;
  return {};
}

// A transcription or translation: json / verbose_json (usage of either type, `duration`), or
// text, srt, vtt (nothing but the text itself).
Usage TranscriptionWhole(std::string_view body, int64_t* completion_chars) {
  Usage usage;
  auto json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) {
    if (completion_chars != nullptr) *completion_chars = Utf8Length(body);
    return usage;
  }
  if (auto it = json.find("usage"); it != json.end()) ReadMediaUsage(*it, usage);
  if (int64_t ms = SecondsMs(json, "duration"); ms >= 0 && usage.audio_ms < 0) usage.audio_ms = ms;
  if (completion_chars != nullptr) *completion_chars = TextChars(json, "text");
  return usage;
}

// Moderations report no usage.
Usage ModerationWhole(std::string_view, int64_t* completion_chars) {
  if (completion_chars != nullptr) *completion_chars = 0;
  return {};
}

// Events of the non-chat streams (transcript.text.*, image_generation.*, image_edit.*,
// speech.audio.*): usage where an event carries it, images completed, text deltas.
void MediaEvent(std::string_view data, Usage& usage, int64_t& relayed_chars) {
  auto json = Json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return;
  if (auto it = json.find("usage"); it != json.end()) ReadMediaUsage(*it, usage);
  const std::string type = Text(json, "type");
  if (type == "image_generation.completed" || type == "image_edit.completed") {
    usage.images = std::max<int64_t>(usage.images, 0) + 1;
    if (usage.image_size.empty()) usage.image_size = Text(json, "size");
    if (usage.image_quality.empty()) usage.image_quality = Text(json, "quality");
  }
  if (type == "transcript.text.delta") relayed_chars += TextChars(json, "delta");
}

std::optional<RequestError> ChatBudget(ParsedRequest& request, const ModelLimits& limits,
                                       int64_t fallback_default) {
  return ApplyCompletionBudget(request, limits, fallback_default);
}

// Image answers report at most kImageOutputTokens per image (the model's default_max_tokens
// when the catalogue sets one), n images.
std::optional<RequestError> ImagesBudget(ParsedRequest& request, const ModelLimits& limits,
                                         int64_t) {
  request.max_tokens =
      limits.default_max_tokens > 0 ? limits.default_max_tokens : kImageOutputTokens;
  request.choices = std::max<int64_t>(1, request.images);
  request.send_max_tokens = false;
  return std::nullopt;
}

// Speech and transcriptions generate what the model's default budget allows (nothing the
// client can set): the catalogue's default_max_tokens, else edge.quota_default_max_tokens.
std::optional<RequestError> DefaultBudget(ParsedRequest& request, const ModelLimits& limits,
                                          int64_t fallback_default) {
  request.max_tokens = limits.default_max_tokens > 0 ? limits.default_max_tokens
                                                     : std::max<int64_t>(1, fallback_default);
  request.choices = 1;
  request.send_max_tokens = false;
  return std::nullopt;
}

// Moderations generate nothing.
std::optional<RequestError> NoBudget(ParsedRequest& request, const ModelLimits&, int64_t) {
  request.max_tokens = 0;
  request.choices = 1;
  request.send_max_tokens = false;
  return std::nullopt;
}

// Anthropic's count_tokens: answered, and free.
Usage CountTokensWhole(std::string_view, int64_t* completion_chars) {
  if (completion_chars != nullptr) *completion_chars = 0;
  Usage none;
  none.present = true;
  return none;
}

// The Responses API stores a response unless told `store: false` (its default is true, unlike
// chat's), and retrieve, cancel and previous_response_id need it stored: stripping `store` would
// turn a client's `store: false` into storing, so it goes upstream as the client sent it.
constexpr std::string_view kResponsesKeptFields[] = {"store"};

// The table. Rows are indexed by Endpoint; a static_assert below keeps them in order.
// Anthropic's Messages API (its client dialect; provider.h) reads the
// usage of its streams in the ClientStream (anthropic_front.h), so its rows have no event reader.
constexpr std::array<EndpointKind, 13> kKinds{{
    {Endpoint::kChatCompletions, "chat_completions", "tokens", ChatBudget, UsageFromBody, nullptr,
     true, false},
    {Endpoint::kCompletions, "completions", "tokens", ChatBudget, UsageFromBody, nullptr, true,
     false},
    {Endpoint::kEmbeddings, "embeddings", "tokens", ChatBudget, UsageFromBody, nullptr, true,
     false},
    {Endpoint::kImagesGenerations, "images_generations", "images (size, quality) or tokens",
     ImagesBudget, ImagesWhole, MediaEvent, false, false},
    {Endpoint::kImagesEdits, "images_edits", "images (size, quality) or tokens", ImagesBudget,
     ImagesWhole, MediaEvent, false, false},
    {Endpoint::kImagesVariations, "images_variations", "images (size)", ImagesBudget, ImagesWhole,
     MediaEvent, false, false},
    {Endpoint::kAudioSpeech, "audio_speech", "characters or tokens", DefaultBudget, NoUsage,
     MediaEvent, false, true},
    {Endpoint::kAudioTranscriptions, "audio_transcriptions", "audio seconds or tokens",
     DefaultBudget, TranscriptionWhole, MediaEvent, false, false},
    {Endpoint::kAudioTranslations, "audio_translations", "audio seconds or tokens", DefaultBudget,
     TranscriptionWhole, MediaEvent, false, false},
    {Endpoint::kModerations, "moderations", "tokens (estimated)", NoBudget, ModerationWhole,
     nullptr, true, false},
    {Endpoint::kMessages, "messages", "tokens", ChatBudget, anthropic::UsageFromMessageBody,
     nullptr, false, false},
    {Endpoint::kCountTokens, "count_tokens", "nothing (free)", NoBudget, CountTokensWhole, nullptr,
     false, false},
    // The Responses API: usage of the response object; its stream (no [DONE]) is read by the
    // ClientStream's ResponsesStream (responses_format.h), which also seals its ids.
    {Endpoint::kResponses, "responses", "tokens", ChatBudget, ResponsesUsageFromBody, nullptr,
     false, false, kResponsesKeptFields},
}};

constexpr bool InOrder() {
  for (size_t i = 0; i < kKinds.size(); ++i)
    if (static_cast<size_t>(kKinds[i].endpoint) != i) return false;
  return true;
}
static_assert(InOrder(), "kKinds rows must be in Endpoint order");

}  // namespace

const EndpointKind& KindOf(Endpoint endpoint) { return kKinds.at(static_cast<size_t>(endpoint)); }

void ApplyUnits(UsageRecord& record, const ParsedRequest& request, const Usage& usage) {
  record.endpoint_kind = std::string(KindOf(request.endpoint).label);
  switch (request.endpoint) {
    case Endpoint::kImagesGenerations:
    case Endpoint::kImagesEdits:
    case Endpoint::kImagesVariations:
      record.images = usage.images >= 0 ? std::min(usage.images, request.images) : request.images;
      record.image_size = !usage.image_size.empty() ? usage.image_size : request.image_size;
      record.image_quality =
          !usage.image_quality.empty() ? usage.image_quality : request.image_quality;
      break;
    case Endpoint::kAudioSpeech:
      record.characters = request.characters;
      break;
    case Endpoint::kAudioTranscriptions:
    case Endpoint::kAudioTranslations:
      if (usage.audio_ms >= 0) {
        record.audio_ms = std::min(usage.audio_ms, request.audio_ms);
      } else {
        record.audio_ms = request.audio_ms_estimate;
        if (!request.audio_ms_measured) record.usage_estimated = true;
      }
      break;
    default:
      break;
  }
}

HoldUnits WorstCaseUnits(const ParsedRequest& request) {
  return {request.images, request.audio_ms, request.characters};
}

}  // namespace tollgate::edge
