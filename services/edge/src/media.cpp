// POST /v1/images/generations, /v1/images/edits, /v1/images/variations, /v1/audio/speech,
// /v1/audio/transcriptions, /v1/audio/translations, /v1/moderations: parsed here (media.h), then
// the one admission step (admission.h), the attempts (attempts.h) and the relay (relay.h), with
// what each bills by from the endpoint kinds' table (endpoint_kinds.h). Transcriptions and
// translations stream their upload (StreamedUpload, upload.h).
#include "src/media.h"

#include "src/admission.h"
#include "src/attempts.h"
#include "src/endpoint_kinds.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "src/multipart.h"
#include "src/upload.h"
#include "tollgate/log.h"
#include "tollgate/saturating.h"

namespace tollgate::edge {
namespace {

using boost::asio::awaitable;
using OrderedJson = nlohmann::ordered_json;

constexpr int64_t kMaxImages = 10;  // the spec's maximum n

int64_t BytesTokens(int64_t bytes) {
  return (std::max<int64_t>(0, bytes) + kPromptBytesPerToken - 1) / kPromptBytesPerToken;
}

RequestError Missing(const char* name) {
  return {std::string("Missing required parameter: '") + name + "'.", name};
}

RequestError BadN(const std::string& text) {
  return {"Invalid 'n': expected an integer from 1 to " + std::to_string(kMaxImages) +
              ", but got " + text.substr(0, 32) + " instead.",
          "n"};
}

// n from a JSON body (absent or null: 1).
std::optional<RequestError> JsonN(const OrderedJson& body, int64_t& n) {
  n = 1;
  auto it = body.find("n");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) return BadN(it->dump());
  // nlohmann reads a non-negative integer as unsigned: compare in that domain first.
  if (it->is_number_unsigned() ? it->get<uint64_t>() > static_cast<uint64_t>(kMaxImages)
                               : it->get<int64_t>() > kMaxImages || it->get<int64_t>() < 1)
    return BadN(it->dump());
  n = it->get<int64_t>();
  if (n < 1) return BadN(it->dump());
  return std::nullopt;
}

// An optional string field (absent or null: ""), or why not.
std::optional<RequestError> JsonText(const OrderedJson& body, const char* name, std::string& out) {
  out.clear();
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string())
    return RequestError{std::string("Invalid type for '") + name + "': expected a string.", name};
  out = it->get<std::string>().substr(0, 64);
  return std::nullopt;
}

std::variant<ParsedRequest, RequestError> ParseJson(Endpoint endpoint, std::string_view body) {
  ParsedRequest out;
  out.endpoint = endpoint;
  if (auto error = ParseJsonObject(body, out.body)) return *error;
  auto& json = out.body;
  auto model = json.find("model");
  if (model != json.end() && !model->is_null() &&
      (!model->is_string() || model->get_ref<const std::string&>().empty()))
    return RequestError{"Invalid 'model': expected a non-empty string.", "model"};
  if (model != json.end() && model->is_string()) {
    out.model = model->get<std::string>();
  } else if (endpoint == Endpoint::kModerations) {
    out.model = std::string(kDefaultModerationModel);  // the spec's default; sent upstream
  } else if (endpoint == Endpoint::kImagesGenerations) {
    out.model = std::string(kDefaultImageModel);
  } else {
    return RequestError{"You must provide a model parameter.", "model"};
  }
  switch (endpoint) {
    case Endpoint::kImagesGenerations: {
      auto prompt = json.find("prompt");
      if (prompt == json.end() || prompt->is_null()) return Missing("prompt");
      if (!prompt->is_string())
        return RequestError{"Invalid type for 'prompt': expected a string.", "prompt"};
      if (auto error = JsonN(json, out.images)) return *error;
      if (auto error = JsonText(json, "size", out.image_size)) return *error;
      if (auto error = JsonText(json, "quality", out.image_quality)) return *error;
      if (auto stream = json.find("stream"); stream != json.end() && !stream->is_null()) {
        if (!stream->is_boolean())
          return RequestError{"Invalid type for 'stream': expected a boolean.", "stream"};
        out.stream = stream->get<bool>();
      }
      break;
    }
    case Endpoint::kAudioSpeech: {
      auto input = json.find("input");
      if (input == json.end() || input->is_null()) return Missing("input");
      if (!input->is_string())
        return RequestError{"Invalid type for 'input': expected a string.", "input"};
      auto voice = json.find("voice");
      if (voice == json.end() || voice->is_null()) return Missing("voice");
      out.characters = Utf8Length(input->get_ref<const std::string&>());
      std::string format;
      if (auto error = JsonText(json, "stream_format", format)) return *error;
      out.stream = format == "sse";
      break;
    }
    case Endpoint::kModerations: {
      auto input = json.find("input");
      if (input == json.end() || input->is_null()) return Missing("input");
      break;
    }
    default:
      return RequestError{"This endpoint takes multipart/form-data.", ""};
  }
  out.prompt_estimate = BytesTokens(static_cast<int64_t>(body.size()));
  return out;
}

// A form field's text value, or nullopt when absent.
std::optional<std::string> Field(const MultipartReader& form, std::string_view name) {
  const MultipartPart* part = form.Find(name);
  if (part == nullptr || part->is_file) return std::nullopt;
  return part->value;
}

// The request a form makes, from its parts as read so far: all of them for a whole body; for an
// upload read ahead (upload.h), those before the file's rest, the file's size then bounded by
// `body_bound` (every byte of the body from the file's start on may be the file's).
std::variant<ParsedRequest, RequestError> FromForm(Endpoint endpoint, const MultipartReader& form,
                                                   uint64_t body_bound) {
  ParsedRequest out;
  out.endpoint = endpoint;
  if (form.parts().empty()) return RequestError{"The multipart form has no fields.", ""};

  // The text fields, as a JSON object for the field policy (its refusals and allowed tiers).
  int64_t text_bytes = 0;
  for (const auto& part : form.parts()) {
    if (part.is_file) continue;
    text_bytes = SatAdd(text_bytes, static_cast<int64_t>(part.size));
    if (part.truncated) continue;
    out.body[part.name] = part.value;
  }
  if (const MultipartPart* model = form.Find("model"); model != nullptr) {
    if (model->is_file || model->truncated || model->value.empty())
      return RequestError{"Invalid 'model': expected a non-empty string.", "model"};
    out.model = model->value;
    out.model_at = model->offset;
    out.model_len = model->size;
  } else if (endpoint == Endpoint::kImagesEdits || endpoint == Endpoint::kImagesVariations) {
    out.model = std::string(kDefaultImageModel);  // the spec's default, sent upstream
    out.model_missing = true;
    out.model_at = form.parts().front().part_offset;
  } else {
    return RequestError{"You must provide a model parameter.", "model"};
  }
  auto flag = [&](const char* name, bool& value) -> std::optional<RequestError> {
    auto text = Field(form, name);
    if (!text) return std::nullopt;
    if (*text != "true" && *text != "false")
      return RequestError{std::string("Invalid value for '") + name + "': expected a boolean.",
                          name};
    value = *text == "true";
    return std::nullopt;
  };

  if (endpoint == Endpoint::kImagesEdits || endpoint == Endpoint::kImagesVariations) {
    int64_t images_in = 0;
    for (const auto& part : form.parts())
      if (part.is_file && (part.name == "image" || part.name == "image[]" || part.name == "mask"))
        ++images_in;
    if (form.Find("image") == nullptr && form.Find("image[]") == nullptr) return Missing("image");
    if (endpoint == Endpoint::kImagesEdits && !Field(form, "prompt")) return Missing("prompt");
    out.images = 1;
    if (auto n = Field(form, "n")) {
      if (n->empty() || n->size() > 2 || n->find_first_not_of("0123456789") != std::string::npos)
        return BadN(*n);
      out.images = std::stoll(*n);
      if (out.images < 1 || out.images > kMaxImages) return BadN(*n);
    }
    out.image_size = Field(form, "size").value_or("").substr(0, 64);
    out.image_quality = Field(form, "quality").value_or("").substr(0, 64);
    if (endpoint == Endpoint::kImagesEdits)
      if (auto error = flag("stream", out.stream)) return *error;
    out.prompt_estimate = SatAdd(BytesTokens(text_bytes), SatMul(images_in, kImageInputTokens));
    return out;
  }

  // Transcriptions and translations: the audio file, its duration measured when it is a WAV
  // file, else bounded by its size at the lowest bit rate an upload can have.
  const MultipartPart* file = form.Find("file");
  if (file == nullptr || !file->is_file) return Missing("file");
  if (endpoint == Endpoint::kAudioTranscriptions)
    if (auto error = flag("stream", out.stream)) return *error;
  const uint64_t file_size =
      file->complete
          ? file->size
          : std::max(file->size, body_bound > file->offset ? body_bound - file->offset : 0);
  const int64_t file_bytes = static_cast<int64_t>(std::min<uint64_t>(file_size, INT64_MAX / 2));
  if (auto ms = WavDurationMs(file->value, file_size)) {
    out.audio_ms = out.audio_ms_estimate = *ms;
    out.audio_ms_measured = true;
  } else {
    out.audio_ms = SatMul(file_bytes, 1000) / kAudioBytesPerSecondFloor + 1;
    out.audio_ms_estimate = SatMul(file_bytes, 1000) / kAudioBytesPerSecondTypical + 1;
  }
  out.prompt_estimate =
      SatAdd(BytesTokens(text_bytes), SatMul((out.audio_ms + 999) / 1000, kAudioTokensPerSecond));
  return out;
}

std::variant<ParsedRequest, RequestError> ParseForm(Endpoint endpoint,
                                                    std::string_view content_type,
                                                    std::string_view body) {
  auto boundary = MultipartBoundary(content_type);
  if (!boundary)
    return RequestError{
        "Invalid Content-Type header: this endpoint expects multipart/form-data with a boundary.",
        ""};
  MultipartReader form(*boundary);
  if (!form.Feed(body) || !form.Finish())
    return RequestError{"Could not parse the multipart form: " + form.error(), ""};
  auto parsed = FromForm(endpoint, form, body.size());
  if (auto* out = std::get_if<ParsedRequest>(&parsed)) {
    out->raw_body = std::string(body);
    out->content_type = std::string(content_type);
    out->multipart_boundary = *boundary;
  }
  return parsed;
}

awaitable<void> Media(Exchange& x, Endpoint endpoint) {
  auto parsed = ParseMediaRequest(endpoint, x.request.Header("content-type"), x.request.body);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return;
  }
  auto& request = std::get<ParsedRequest>(parsed);
  // The field policy sees a form's text fields too (refusals, service tiers); a form is relayed
  // as sent, so a field to strip from it is not stripped.
  FieldDecision fields = x.edge.field_policy.Apply(request.body);
  if (fields.refusal) {
    co_await x.SendError(ErrorCode::kInvalidRequest, fields.refusal->message,
                         fields.refusal->param);
    co_return;
  }
  // Binary uploads (audio, images) are not stored with the record, only what they were.
  x.binary_request = !request.raw_body.empty();
  std::optional<RouteResult> plan = co_await AdmitInference(x, request, fields.service_tier);
  if (plan) co_await RunAttempts(x, request, *plan);
}

// Transcriptions and translations: the upload streamed (upload.h). The key is checked on the
// request head, so nothing of a refused upload is read (nor spilled); then the form is read
// ahead until routing can be decided, and admission and the attempts run as for any media
// request, each attempt reading the body as it sends it.
awaitable<void> StreamedUpload(Exchange& x, Endpoint endpoint) {
  BodyStream* body = x.request.body_stream;
  if (body == nullptr) {  // a route without streams_body: the body was read whole
    co_await Media(x, endpoint);
    co_return;
  }
  const std::string content_type(x.request.Header("content-type"));
  auto boundary = MultipartBoundary(content_type);
  if (!boundary) {
    co_await x.SendError(
        ErrorCode::kInvalidRequest,
        "Invalid Content-Type header: this endpoint expects multipart/form-data with a boundary.");
    co_return;
  }
  if (!co_await x.Authenticate()) co_return;
  StreamedForm upload(*body, *boundary, "file", x.edge.options.upload_spill_dir);
  if (!co_await upload.ReadAhead()) {
    const BodyStream::Failure& failure = *upload.failure();
    if (failure.status >= 500)
      log::Write(log::Level::kError, "edge", "upload read-ahead failed",
                 {{"detail", failure.message}}, x.request.request_id);
    if (failure.status != 0)  // else the client is gone: nobody to answer
      co_await x.SendError(
          BodyFailureCode(failure.status),
          failure.status >= 500 ? "The upload could not be buffered." : failure.message);
    co_return;
  }
  // Every byte from the file's start on may be the file's: the body's length, else the limit.
  const uint64_t bound = upload.whole()
                             ? upload.held_bytes()
                             : upload.client_length().value_or(x.edge.options.max_upload_bytes);
  auto parsed = FromForm(endpoint, upload.form(), bound);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return;
  }
  ParsedRequest& request = std::get<ParsedRequest>(parsed);
  request.content_type = content_type;
  request.multipart_boundary = *boundary;
  request.upload = &upload;
  upload.SetModelSpan(request.model_at, request.model_len);
  FieldDecision fields = x.edge.field_policy.Apply(request.body);
  if (fields.refusal) {
    co_await x.SendError(ErrorCode::kInvalidRequest, fields.refusal->message,
                         fields.refusal->param);
    co_return;
  }
  // The fields after the file, once an attempt has streamed them: the field policy refuses
  // them as it would have before routing (the upstream call ends unfinished); the stream flag
  // and the file's actual size (the duration bound, the estimate) take effect for the answer
  // and the record.
  upload.on_end = [&x, &request,
                   endpoint](const MultipartReader& form) -> std::optional<BodyStream::Failure> {
    auto whole = FromForm(endpoint, form, form.fed());
    if (auto* error = std::get_if<RequestError>(&whole))
      return BodyStream::Failure{400, error->message};
    ParsedRequest& now = std::get<ParsedRequest>(whole);
    FieldDecision late = x.edge.field_policy.Apply(now.body);
    if (late.refusal) return BodyStream::Failure{400, late.refusal->message};
    request.stream = now.stream;
    x.record.streamed = now.stream;
    request.audio_ms = std::min(request.audio_ms, now.audio_ms);
    request.audio_ms_estimate = std::min(request.audio_ms, now.audio_ms_estimate);
    request.audio_ms_measured = now.audio_ms_measured;
    request.prompt_estimate = now.prompt_estimate;
    return std::nullopt;
  };
  x.binary_request = true;
  std::optional<RouteResult> plan = co_await AdmitInference(x, request, fields.service_tier);
  if (plan) co_await RunAttempts(x, request, *plan);
}

}  // namespace

bool IsMultipartEndpoint(Endpoint endpoint) {
  return endpoint == Endpoint::kImagesEdits || endpoint == Endpoint::kImagesVariations ||
         endpoint == Endpoint::kAudioTranscriptions || endpoint == Endpoint::kAudioTranslations;
}

std::variant<ParsedRequest, RequestError> ParseMediaRequest(Endpoint endpoint,
                                                            std::string_view content_type,
                                                            std::string_view body) {
  if (IsMultipartEndpoint(endpoint)) return ParseForm(endpoint, content_type, body);
  return ParseJson(endpoint, body);
}

awaitable<void> ImagesGenerations(Exchange& x) { return Media(x, Endpoint::kImagesGenerations); }
awaitable<void> ImagesEdits(Exchange& x) { return Media(x, Endpoint::kImagesEdits); }
awaitable<void> ImagesVariations(Exchange& x) { return Media(x, Endpoint::kImagesVariations); }
awaitable<void> AudioSpeech(Exchange& x) { return Media(x, Endpoint::kAudioSpeech); }
awaitable<void> AudioTranscriptions(Exchange& x) {
  return StreamedUpload(x, Endpoint::kAudioTranscriptions);
}
awaitable<void> AudioTranslations(Exchange& x) {
  return StreamedUpload(x, Endpoint::kAudioTranslations);
}
awaitable<void> Moderations(Exchange& x) { return Media(x, Endpoint::kModerations); }

}  // namespace tollgate::edge
