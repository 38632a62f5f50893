// What each inference endpoint bills by and how its usage is read, as one table (issue #12): per
// kind, its label (the route's metrics label and the usage record's endpoint_kind), the units it
// reports, how its worst case is fixed for quota admission and the billing hold, how usage is
// read from a whole answer and from the events of a stream, and how the answer is relayed.
// Adding an endpoint touches the route table (routes.cpp), this table and the endpoint's own
// file only. Pure logic, unit-tested in test/media_test.cpp.
#pragma once

#include <optional>
#include <span>
#include <string_view>

#include "src/clients.h"
#include "src/openai.h"

namespace tollgate::edge {

// Worst cases of the units that have no client-given limit (upper bounds of what the provider
// counts, like kPromptBytesPerToken): tokens an image answer may report per image (gpt-image-1
// reports at most 6,240 output tokens for one high-quality 1536x1024 image), tokens per input
// image of an edit, audio tokens per second of a transcription's input (OpenAI's audio models
// count about 10), and the lowest bit rate an audio upload can have (6 kbit/s Opus), which bounds
// the duration of a file whose length the edge cannot read. A recording without a reported or
// measured duration is charged at kAudioBytesPerSecondTypical (128 kbit/s), flagged estimated.
inline constexpr int64_t kImageOutputTokens = 10'000;
inline constexpr int64_t kImageInputTokens = 10'000;
inline constexpr int64_t kAudioTokensPerSecond = 25;
inline constexpr int64_t kAudioBytesPerSecondFloor = 750;
inline constexpr int64_t kAudioBytesPerSecondTypical = 16'000;
// The moderation model when a request names none (the spec's default).
inline constexpr std::string_view kDefaultModerationModel = "omni-moderation-latest";
// The image model when a request names none (the spec's default).
inline constexpr std::string_view kDefaultImageModel = "dall-e-2";

struct EndpointKind {
  Endpoint endpoint;
  // The route's label (tollgate_edge_http_requests_total{route}) and the record's endpoint_kind.
  std::string_view label;
  // What it bills by, as the price table names it (docs, tollgatectl).
  std::string_view units;
  // The worst case, once the model's limits are known: the completion budget and choices (and
  // a 400 for a client limit above the model's).
  std::optional<RequestError> (*budget)(ParsedRequest& request, const ModelLimits& limits,
                                        int64_t fallback_default);
  // Usage of a whole 2xx answer; `completion_chars` gets the generated characters.
  Usage (*whole)(std::string_view body, int64_t* completion_chars);
  // Usage of one event of a 2xx stream; nullptr: OpenAI chat chunks (StreamRelay's own rules).
  StreamRelay::EventUsage event;
  // The client's stream ends with `data: [DONE]` (chat, completions).
  bool done_sentinel;
  // A 2xx answer that is not an event stream is binary and relayed as it arrives (speech).
  bool binary_answer;
  // Fields the field policy never strips for this kind (edge.strip_fields names them for the
  // others): they can still be refused (edge.reject_fields).
  std::span<const std::string_view> kept_fields = {};
};

// The row of `endpoint`. Rows: chat_completions, completions, embeddings, images_generations,
// images_edits, images_variations, audio_speech, audio_transcriptions, audio_translations,
// moderations, messages, count_tokens (Anthropic's Messages API), responses.
const EndpointKind& KindOf(Endpoint endpoint);

// The record's endpoint kind and units, from what the request may use and what the answer
// reported (`usage`): images (the answer's count, else n) with their size and quality, audio
// duration (reported, else measured, else estimated: then usage_estimated), characters.
void ApplyUnits(UsageRecord& record, const ParsedRequest& request, const Usage& usage);

// Units for the hold: the most the request can be billed for (images n, the audio duration
// bound, the characters).
struct HoldUnits {
  int64_t images = 0;
  int64_t audio_ms = 0;
  int64_t characters = 0;
};
HoldUnits WorstCaseUnits(const ParsedRequest& request);

}  // namespace tollgate::edge
