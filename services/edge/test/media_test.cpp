// The media endpoints as pure logic: the multipart reader (fed at every split), WAV durations,
// the media request parser, the endpoint kinds' table (worst cases, usage from answers and
// stream events, the record's units) and the multipart body's model rewrite.
#include <gtest/gtest.h>

#include <variant>

#include "src/endpoint_kinds.h"
#include "src/media.h"
#include "src/multipart.h"
#include "src/routes.h"

namespace tollgate::edge {
namespace {

std::string Le(uint32_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A PCM WAV file: `ms` of 16-bit mono at 8 kHz (16,000 bytes a second).
std::string Wav(uint32_t ms) {
  const uint32_t data = ms * 16;
  return "RIFF" + Le(36 + data, 4) + "WAVEfmt " + Le(16, 4) + Le(1, 2) + Le(1, 2) + Le(8000, 4) +
         Le(16000, 4) + Le(2, 2) + Le(16, 2) + "data" + Le(data, 4) + std::string(data, '\x01');
}

const std::string kBoundary = "----tollgate-b0undary";

std::string Form(const std::vector<std::tuple<std::string, std::string, std::string>>& parts) {
  std::string out = "preamble to ignore\r\n";
  for (const auto& [name, filename, value] : parts) {
    out += "--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"" + name + "\"";
    if (!filename.empty())
      out += "; filename=\"" + filename + "\"\r\nContent-Type: application/octet-stream";
    out += "\r\n\r\n" + value + "\r\n";
  }
  return out + "--" + kBoundary + "--\r\nepilogue";
}

const std::string kContentType = "multipart/form-data; boundary=" + kBoundary;

TEST(Multipart, BoundaryComesFromTheContentType) {
  EXPECT_EQ(MultipartBoundary("multipart/form-data; boundary=abc"), "abc");
  EXPECT_EQ(MultipartBoundary("Multipart/Form-Data;boundary=\"a b:c\""), "a b:c");
  EXPECT_EQ(MultipartBoundary("multipart/form-data; charset=x; boundary=z"), "z");
  EXPECT_FALSE(MultipartBoundary("application/json"));
  EXPECT_FALSE(MultipartBoundary("multipart/form-data"));
  EXPECT_FALSE(MultipartBoundary("multipart/form-data; boundary=" + std::string(71, 'a')));
}

TEST(Multipart, ReadsTheSameFieldsAtEverySplit) {
  // Bytes that look like a delimiter's start inside a value must not end it.
  const std::string audio = Wav(50) + "\r\n--" + kBoundary.substr(0, 5) + "\r\n-";
  const std::string body = Form({{"model", "", "whisper-1"},
                                 {"file", "a.wav", audio},
                                 {"empty", "", ""},
                                 {"response_format", "", "verbose_json"}});
  for (size_t split = 0; split <= body.size(); ++split) {
    for (size_t second : {split, std::min(body.size(), split + 1), body.size()}) {
      MultipartReader reader(kBoundary);
      ASSERT_TRUE(reader.Feed(std::string_view(body).substr(0, split))) << split;
      ASSERT_TRUE(reader.Feed(std::string_view(body).substr(split, second - split))) << split;
      ASSERT_TRUE(reader.Feed(std::string_view(body).substr(second))) << split;
      ASSERT_TRUE(reader.Finish()) << split << ": " << reader.error();
      ASSERT_EQ(reader.parts().size(), 4u) << split;
      const MultipartPart* model = reader.Find("model");
      ASSERT_NE(model, nullptr);
      EXPECT_EQ(model->value, "whisper-1");
      EXPECT_EQ(body.substr(model->offset, model->size), "whisper-1");
      EXPECT_EQ(body.substr(model->part_offset, 2 + kBoundary.size()), "--" + kBoundary);
      const MultipartPart* file = reader.Find("file");
      ASSERT_NE(file, nullptr);
      EXPECT_TRUE(file->is_file);
      EXPECT_EQ(file->filename, "a.wav");
      EXPECT_EQ(file->size, audio.size());
      EXPECT_EQ(file->value, audio.substr(0, MultipartReader::kMaxFileHead));
      EXPECT_EQ(body.substr(file->offset, file->size), audio);
      EXPECT_EQ(reader.Find("empty")->size, 0u);
      EXPECT_EQ(reader.Find("response_format")->value, "verbose_json");
    }
  }
}

TEST(Multipart, RefusesMalformedBodiesAndBoundsWhatItKeeps) {
  auto read = [](const std::string& body) {
    MultipartReader reader(kBoundary);
    return reader.Feed(body) && reader.Finish();
  };
  EXPECT_FALSE(read("no delimiter at all"));
  EXPECT_FALSE(read("--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx"));
  EXPECT_FALSE(read("--" + kBoundary + "\r\nContent-Type: text/plain\r\n\r\nx\r\n--" + kBoundary +
                    "--"));  // no name
  EXPECT_FALSE(read("--" + kBoundary + "\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx" +
                    "\r\n--" + kBoundary + "--"));
  EXPECT_FALSE(read("--" + kBoundary + "junk\r\n"));
  // Headers beyond the limit fail without waiting for their end.
  MultipartReader big(kBoundary);
  EXPECT_FALSE(big.Feed("--" + kBoundary +
                        "\r\nX: " + std::string(MultipartReader::kMaxPartHeaders + 1, 'h')));
  // Too many parts.
  std::vector<std::tuple<std::string, std::string, std::string>> many;
  for (size_t i = 0; i <= MultipartReader::kMaxParts; ++i) many.emplace_back("f", "", "v");
  EXPECT_FALSE(read(Form(many)));
  // A long text field keeps kMaxFieldValue bytes and says it was cut.
  MultipartReader reader(kBoundary);
  const std::string body =
      Form({{"prompt", "", std::string(MultipartReader::kMaxFieldValue + 10, 'p')}});
  for (size_t at = 0; at < body.size(); at += 1000) ASSERT_TRUE(reader.Feed(body.substr(at, 1000)));
  ASSERT_TRUE(reader.Finish());
  EXPECT_TRUE(reader.Find("prompt")->truncated);
  EXPECT_EQ(reader.Find("prompt")->value.size(), MultipartReader::kMaxFieldValue);
  EXPECT_EQ(reader.Find("prompt")->size, MultipartReader::kMaxFieldValue + 10);
}

TEST(Multipart, WavDurationFromItsHeader) {
  const std::string wav = Wav(1500);
  EXPECT_EQ(WavDurationMs(wav, wav.size()), 1500);
  // A data chunk claiming more than the file holds counts what the file holds.
  EXPECT_EQ(WavDurationMs(wav.substr(0, 44), 44 + 16 * 100), 100);
  EXPECT_FALSE(WavDurationMs("ID3\x04", 4));
  EXPECT_FALSE(WavDurationMs(wav.substr(0, 30), wav.size()));
}

ParsedRequest MustParse(Endpoint endpoint, std::string_view content_type, std::string_view body) {
  auto parsed = ParseMediaRequest(endpoint, content_type, body);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    ADD_FAILURE() << "unexpected error: " << error->message;
    return {};
  }
  return std::get<ParsedRequest>(std::move(parsed));
}

RequestError MustFail(Endpoint endpoint, std::string_view content_type, std::string_view body) {
  auto parsed = ParseMediaRequest(endpoint, content_type, body);
  if (!std::holds_alternative<RequestError>(parsed)) {
    ADD_FAILURE() << "parsed although invalid: " << body;
    return {};
  }
  return std::get<RequestError>(parsed);
}

TEST(MediaRequest, ImagesGenerationsAndItsWorstCase) {
  auto r = MustParse(Endpoint::kImagesGenerations, "application/json",
                     R"({"model":"dall-e-3","prompt":"otter","n":3,"size":"1024x1024",
                         "quality":"hd"})");
  EXPECT_EQ(r.model, "dall-e-3");
  EXPECT_EQ(r.images, 3);
  EXPECT_EQ(r.image_size, "1024x1024");
  EXPECT_EQ(r.image_quality, "hd");
  EXPECT_FALSE(KindOf(r.endpoint).budget(r, {}, 4096));
  EXPECT_EQ(WorstCaseCompletionTokens(r), 3 * kImageOutputTokens);
  EXPECT_EQ(WorstCaseUnits(r).images, 3);
  // No model: the spec's default.
  EXPECT_EQ(MustParse(Endpoint::kImagesGenerations, "", R"({"prompt":"p"})").model, "dall-e-2");
  EXPECT_EQ(MustFail(Endpoint::kImagesGenerations, "", R"({"model":"m"})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kImagesGenerations, "", R"({"prompt":"p","n":11})").param, "n");
  EXPECT_EQ(MustFail(Endpoint::kImagesGenerations, "", R"({"prompt":"p","n":0})").param, "n");
  EXPECT_EQ(MustFail(Endpoint::kImagesGenerations, "", R"({"prompt":"p","model":7})").param,
            "model");
}

TEST(MediaRequest, SpeechCountsCharactersAndModerationsDefaultTheModel) {
  auto speech = MustParse(Endpoint::kAudioSpeech, "",
                          R"({"model":"tts-1","input":"héllo wörld","voice":"alloy"})");
  EXPECT_EQ(speech.characters, 11);
  EXPECT_FALSE(speech.stream);
  EXPECT_EQ(WorstCaseUnits(speech).characters, 11);
  EXPECT_TRUE(MustParse(Endpoint::kAudioSpeech, "",
                        R"({"model":"m","input":"x","voice":"v","stream_format":"sse"})")
                  .stream);
  EXPECT_EQ(MustFail(Endpoint::kAudioSpeech, "", R"({"model":"tts-1","input":"x"})").param,
            "voice");
  EXPECT_EQ(MustFail(Endpoint::kAudioSpeech, "", R"({"input":"x","voice":"v"})").param, "model");
  auto moderation = MustParse(Endpoint::kModerations, "", R"({"input":["a","b"]})");
  EXPECT_EQ(moderation.model, "omni-moderation-latest");
  EXPECT_EQ(RenderUpstreamBody(moderation, "omni-moderation-2024-09-26"),
            R"({"input":["a","b"],"model":"omni-moderation-2024-09-26"})");
  EXPECT_FALSE(KindOf(moderation.endpoint).budget(moderation, {}, 4096));
  EXPECT_EQ(WorstCaseCompletionTokens(moderation), 0);
  EXPECT_EQ(MustFail(Endpoint::kModerations, "", R"({"model":"m"})").param, "input");
}

TEST(MediaRequest, TranscriptionsMeasureAWavAndRewriteOnlyTheModel) {
  const std::string wav = Wav(2000);
  const std::string body =
      Form({{"file", "a.wav", wav}, {"model", "", "stt"}, {"stream", "", "true"}});
  auto r = MustParse(Endpoint::kAudioTranscriptions, kContentType, body);
  EXPECT_EQ(r.model, "stt");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.audio_ms_measured);
  EXPECT_EQ(r.audio_ms, 2000);
  EXPECT_EQ(WorstCaseUnits(r).audio_ms, 2000);
  std::string upstream = RenderUpstreamBody(r, "gpt-4o-transcribe");
  std::string expected = body;
  expected.replace(expected.find("\r\n\r\nstt\r\n") + 4, 3, "gpt-4o-transcribe");
  EXPECT_EQ(upstream, expected);
  // Not a WAV: bounded by the lowest bit rate, estimated at a typical one.
  auto mp3 =
      MustParse(Endpoint::kAudioTranslations, kContentType,
                Form({{"model", "", "whisper-1"}, {"file", "a.mp3", std::string(7500, 'x')}}));
  EXPECT_FALSE(mp3.audio_ms_measured);
  EXPECT_EQ(mp3.audio_ms, 10'001);
  EXPECT_EQ(mp3.audio_ms_estimate, 7500 * 1000 / kAudioBytesPerSecondTypical + 1);
  EXPECT_EQ(
      MustFail(Endpoint::kAudioTranscriptions, kContentType, Form({{"model", "", "whisper-1"}}))
          .param,
      "file");
  EXPECT_EQ(
      MustFail(Endpoint::kAudioTranscriptions, kContentType, Form({{"file", "a.wav", wav}})).param,
      "model");
  EXPECT_EQ(MustFail(Endpoint::kAudioTranscriptions, "application/json", "{}").param, "");
  EXPECT_EQ(MustFail(Endpoint::kAudioTranscriptions, kContentType, "--" + kBoundary + "\r\n").param,
            "");
}

TEST(MediaRequest, AnImageEditWithoutAModelGetsTheDefaultPart) {
  const std::string body =
      Form({{"image", "a.png", "PNGDATA"}, {"prompt", "", "hat"}, {"n", "", "2"}});
  auto r = MustParse(Endpoint::kImagesEdits, kContentType, body);
  EXPECT_EQ(r.model, "dall-e-2");
  EXPECT_EQ(r.images, 2);
  std::string upstream = RenderUpstreamBody(r, "");
  MultipartReader reader(kBoundary);
  ASSERT_TRUE(reader.Feed(upstream) && reader.Finish()) << reader.error();
  ASSERT_NE(reader.Find("model"), nullptr);
  EXPECT_EQ(reader.Find("model")->value, "dall-e-2");
  EXPECT_EQ(reader.Find("image")->value, "PNGDATA");
  EXPECT_EQ(reader.parts().size(), 4u);
  EXPECT_EQ(MustFail(Endpoint::kImagesEdits, kContentType, Form({{"prompt", "", "hat"}})).param,
            "image");
  EXPECT_EQ(MustFail(Endpoint::kImagesEdits, kContentType,
                     Form({{"image", "a.png", "x"}, {"prompt", "", "p"}, {"n", "", "x"}}))
                .param,
            "n");
}

TEST(EndpointKinds, OneRowPerEndpointWithItsLabel) {
  const std::vector<std::pair<Endpoint, std::string>> rows = {
      {Endpoint::kChatCompletions, "chat_completions"},
      {Endpoint::kCompletions, "completions"},
      {Endpoint::kEmbeddings, "embeddings"},
      {Endpoint::kImagesGenerations, "images_generations"},
      {Endpoint::kImagesEdits, "images_edits"},
      {Endpoint::kImagesVariations, "images_variations"},
      {Endpoint::kAudioSpeech, "audio_speech"},
      {Endpoint::kAudioTranscriptions, "audio_transcriptions"},
      {Endpoint::kAudioTranslations, "audio_translations"},
      {Endpoint::kModerations, "moderations"}};
  for (const auto& [endpoint, label] : rows) {
    EXPECT_EQ(KindOf(endpoint).endpoint, endpoint);
    EXPECT_EQ(KindOf(endpoint).label, label);
    EXPECT_FALSE(KindOf(endpoint).units.empty());
  }
  EXPECT_TRUE(KindOf(Endpoint::kChatCompletions).done_sentinel);
  EXPECT_FALSE(KindOf(Endpoint::kAudioTranscriptions).done_sentinel);
  EXPECT_TRUE(KindOf(Endpoint::kAudioSpeech).binary_answer);
  EXPECT_EQ(EndpointSuffix(Endpoint::kAudioTranscriptions), "/audio/transcriptions");
  EXPECT_EQ(UpstreamSuffix(ProviderKind::kAzureOpenAi, Endpoint::kImagesGenerations, "dep", "v1"),
            "/openai/deployments/dep/images/generations?api-version=v1");
}

TEST(EndpointKinds, EveryInferenceRouteIsLabelledAsItsKind) {
  for (Endpoint endpoint :
       {Endpoint::kChatCompletions, Endpoint::kCompletions, Endpoint::kEmbeddings,
        Endpoint::kImagesGenerations, Endpoint::kImagesEdits, Endpoint::kImagesVariations,
        Endpoint::kAudioSpeech, Endpoint::kAudioTranscriptions, Endpoint::kAudioTranslations,
        Endpoint::kModerations}) {
    RouteMatch m = EdgeRoutes().Match("POST", "/v1" + std::string(EndpointSuffix(endpoint)));
    ASSERT_EQ(m.result, RouteMatch::Result::kFound) << EndpointSuffix(endpoint);
    EXPECT_EQ(m.route->label, KindOf(endpoint).label);
  }
}

TEST(EndpointKinds, UsageFromWholeAnswers) {
  int64_t chars = 0;
  Usage image = KindOf(Endpoint::kImagesGenerations)
                    .whole(R"({"created":1,"data":[{"b64_json":"x"},{"b64_json":"y"}],
                               "size":"1536x1024","quality":"high",
                               "usage":{"total_tokens":12510,"input_tokens":30,
                                        "output_tokens":12480,"input_tokens_details":
                                        {"text_tokens":30,"image_tokens":0}}})",
                           &chars);
  EXPECT_TRUE(image.present);
  EXPECT_EQ(image.prompt_tokens, 30);
  EXPECT_EQ(image.completion_tokens, 12480);
  EXPECT_EQ(image.images, 2);
  EXPECT_EQ(image.image_size, "1536x1024");
  Usage dalle =
      KindOf(Endpoint::kImagesGenerations).whole(R"({"created":1,"data":[{"url":"u"}]})", &chars);
  EXPECT_FALSE(dalle.present);
  EXPECT_EQ(dalle.images, 1);

  Usage verbose = KindOf(Endpoint::kAudioTranscriptions)
                      .whole(R"({"language":"english","duration":8.47,"text":"hi there"})", &chars);
  EXPECT_FALSE(verbose.present);
  EXPECT_EQ(verbose.audio_ms, 8470);
  EXPECT_EQ(chars, 8);
  Usage seconds = KindOf(Endpoint::kAudioTranscriptions)
                      .whole(R"({"text":"x","usage":{"type":"duration","seconds":3}})", &chars);
  EXPECT_EQ(seconds.audio_ms, 3000);
  Usage tokens = KindOf(Endpoint::kAudioTranscriptions)
                     .whole(R"({"text":"x","usage":{"type":"tokens","input_tokens":14,
                               "input_token_details":{"text_tokens":0,"audio_tokens":14},
                               "output_tokens":45,"total_tokens":59}})",
                            &chars);
  EXPECT_TRUE(tokens.present);
  EXPECT_EQ(tokens.prompt_tokens, 14);
  EXPECT_EQ(tokens.completion_tokens, 45);
  Usage text = KindOf(Endpoint::kAudioTranscriptions).whole("plain words\n", &chars);
  EXPECT_FALSE(text.present);
  EXPECT_EQ(text.audio_ms, -1);
  EXPECT_EQ(chars, 12);
  EXPECT_FALSE(KindOf(Endpoint::kModerations).whole(R"({"id":"m","results":[]})", &chars).present);
}

TEST(EndpointKinds, UsageFromStreamEventsAndTheRecordsUnits) {
  StreamRelay relay(false, KindOf(Endpoint::kAudioTranscriptions).event);
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed(
      "data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hel\"}\n\n"
      "data: {\"type\":\"transcript.text.delta\",\"delta\":\"lo\"}\n\n"
      "data: {\"type\":\"transcript.text.done\",\"text\":\"Hello\",\"usage\":"
      "{\"type\":\"tokens\",\"input_tokens\":7,\"output_tokens\":2,\"total_tokens\":9}}"
      "\n\n",
      events);
  ASSERT_EQ(events.size(), 3u);
  for (const auto& e : events) EXPECT_EQ(relay.OnEvent(e), StreamRelay::Action::kForward);
  EXPECT_TRUE(relay.usage().present);
  EXPECT_EQ(relay.usage().prompt_tokens, 7);
  EXPECT_EQ(relay.usage().completion_tokens, 2);
  EXPECT_EQ(relay.relayed_chars(), 5);

  // The record: the answer's image count (never above n) with its size; else n as asked.
  auto images = MustParse(Endpoint::kImagesGenerations, "",
                          R"({"prompt":"p","n":2,"size":"1024x1024","quality":"hd"})");
  UsageRecord record;
  Usage answer;
  answer.images = 5;
  ApplyUnits(record, images, answer);
  EXPECT_EQ(record.endpoint_kind, "images_generations");
  EXPECT_EQ(record.images, 2);
  EXPECT_EQ(record.image_quality, "hd");
  ApplyUnits(record, images, Usage{});
  EXPECT_EQ(record.images, 2);
  // A transcription without a reported duration: the measured one, or an estimate flagged so.
  const std::string body =
      Form({{"model", "", "whisper-1"}, {"file", "a.mp3", std::string(32000, 'x')}});
  auto mp3 = MustParse(Endpoint::kAudioTranscriptions, kContentType, body);
  UsageRecord estimated;
  ApplyUnits(estimated, mp3, Usage{});
  EXPECT_EQ(estimated.audio_ms, mp3.audio_ms_estimate);
  EXPECT_TRUE(estimated.usage_estimated);
  Usage reported;
  reported.audio_ms = 1234;
  UsageRecord exact;
  ApplyUnits(exact, mp3, reported);
  EXPECT_EQ(exact.audio_ms, 1234);
  EXPECT_FALSE(exact.usage_estimated);
}

}  // namespace
}  // namespace tollgate::edge
