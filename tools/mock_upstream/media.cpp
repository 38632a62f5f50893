#include "media.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

namespace tollgate::mock::media {
namespace {

using Json = nlohmann::json;

ApiError BadRequest(std::string message, std::optional<std::string> param = std::nullopt) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

std::string Base64(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(data.data()),
                                static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(std::max(n, 0)));
  return out;
}

void Le16(std::string& out, uint32_t v) {
  out += static_cast<char>(v & 0xff);
  out += static_cast<char>((v >> 8) & 0xff);
}
void Le32(std::string& out, uint32_t v) {
  Le16(out, v & 0xffff);
  Le16(out, v >> 16);
}
uint32_t ReadLe32(std::string_view s, size_t at) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[at])) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3])) << 24;
}

// A 16-bit mono PCM WAV file of `ms` milliseconds at 8 kHz (a quiet tone).
std::string Wav(int64_t ms) {
  const uint32_t samples = static_cast<uint32_t>(ms * 8);
  std::string out = "RIFF";
  Le32(out, 36 + samples * 2);
  out += "WAVEfmt ";
  Le32(out, 16);
  Le16(out, 1);      // PCM
  Le16(out, 1);      // mono
  Le32(out, 8000);   // sample rate
  Le32(out, 16000);  // byte rate
  Le16(out, 2);      // block align
  Le16(out, 16);     // bits per sample
  out += "data";
  Le32(out, samples * 2);
  for (uint32_t i = 0; i < samples; ++i) Le16(out, (i / 8) % 2 ? 0x0400 : 0xfc00);
  return out;
}

// A 1x1 PNG (a real, decodable image).
constexpr std::string_view kPng(
    "\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52"
    "\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4"
    "\x89\x00\x00\x00\x0d\x49\x44\x41\x54\x78\x9c\x63\xf8\xcf\xc0\xf0"
    "\x1f\x00\x05\x00\x01\xff\x89\x99\x3d\x1d\x00\x00\x00\x00\x49\x45"
    "\x4e\x44\xae\x42\x60\x82",
    70);

// gpt-image-1's output tokens per image by quality and size (OpenAI's published table).
int64_t ImageOutputTokens(const std::string& quality, const std::string& size) {
  const int q = quality == "low" ? 0 : quality == "high" ? 2 : 1;  // auto/medium: medium
  const int s = size == "1024x1536" ? 1 : size == "1536x1024" ? 2 : 0;
  static constexpr int64_t kTable[3][3] = {{272, 408, 400}, {1056, 1584, 1568}, {4160, 6240, 6208}};
  return kTable[q][s];
}

std::string Str(const Json& j, const char* name, std::string fallback = "") {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

std::string Words(uint64_t seed, int32_t n) {
  std::string text;
  std::vector<uint32_t> cuts;
  gen::FillWords(seed, n, 1, &text, &cuts);
  return text;
}

}  // namespace

std::optional<Form> ParseForm(std::string_view content_type, std::string_view body,
                              std::string* error) {
  size_t b = content_type.find("boundary=");
  if (content_type.substr(0, 19) != "multipart/form-data" || b == std::string_view::npos) {
    *error = "Invalid Content-Type header (" + std::string(content_type.substr(0, 64)) +
             "), expected multipart/form-data. (HINT: If you're using curl, you can pass "
             "-H 'Content-Type: multipart/form-data')";
    return std::nullopt;
  }
  std::string boundary(content_type.substr(b + 9));
  if (size_t semi = boundary.find(';'); semi != std::string::npos) boundary.resize(semi);
  if (boundary.size() >= 2 && boundary.front() == '"')
    boundary = boundary.substr(1, boundary.size() - 2);
  const std::string delimiter = "--" + boundary;
  Form form;
  size_t at = body.find(delimiter);
  if (at == std::string_view::npos) {
    *error = "Could not parse multipart form";
    return std::nullopt;
  }
  for (;;) {
    at += delimiter.size();
    if (body.substr(at, 2) == "--") return form;
    if (body.substr(at, 2) != "\r\n") break;
    at += 2;
    size_t head_end = body.find("\r\n\r\n", at);
    if (head_end == std::string_view::npos) break;
    std::string_view head = body.substr(at, head_end - at);
    size_t next = body.find("\r\n" + delimiter, head_end + 4);
    if (next == std::string_view::npos) break;
    std::string_view data = body.substr(head_end + 4, next - head_end - 4);
    std::string name, filename, type;
    bool file = false;
    for (size_t pos = 0; pos <= head.size();) {
      size_t eol = head.find("\r\n", pos);
      std::string line(head.substr(pos, eol == std::string_view::npos ? eol : eol - pos));
      std::string lower = line;
      std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
      if (lower.starts_with("content-disposition:")) {
        auto param = [&](const std::string& key) -> std::optional<std::string> {
          size_t k = line.find(key + "=\"");
          if (k == std::string::npos || (k > 0 && line[k - 1] != ' ' && line[k - 1] != ';'))
            return std::nullopt;
          size_t start = k + key.size() + 2;
          return line.substr(start, line.find('"', start) - start);
        };
        name = param("name").value_or("");
        if (auto f = param("filename")) {
          filename = *f;
          file = true;
        }
      } else if (lower.starts_with("content-type:")) {
        type = line.substr(13);
        while (!type.empty() && type.front() == ' ') type.erase(0, 1);
      }
      if (eol == std::string_view::npos) break;
      pos = eol + 2;
    }
    if (file) {
      form.files[name] = {filename, type, std::string(data)};
      if (name == "image" || name == "image[]") ++form.images;
    } else {
      form.fields[name] = std::string(data);
    }
    at = next + 2;
  }
  *error = "Could not parse multipart form";
  return std::nullopt;
}

std::optional<double> WavSeconds(std::string_view data) {
  if (data.size() < 12 || data.substr(0, 4) != "RIFF" || data.substr(8, 4) != "WAVE")
    return std::nullopt;
  uint32_t byte_rate = 0;
  for (size_t at = 12; at + 8 <= data.size();) {
    std::string_view id = data.substr(at, 4);
    const uint64_t size = ReadLe32(data, at + 4);
    if (id == "fmt " && at + 24 <= data.size()) byte_rate = ReadLe32(data, at + 16);
    if (id == "data") {
      if (byte_rate == 0) return std::nullopt;
      const uint64_t available = data.size() - (at + 8);
      return static_cast<double>(std::min(size, available)) / byte_rate;
    }
    at += 8 + size + (size & 1);
  }
  return std::nullopt;
}

Reply Images(const Json& params, int32_t input_images, bool edit, int64_t created) {
  Reply reply;
  const std::string model = Str(params, "model", "dall-e-2");
  const bool gpt_image =
      model.starts_with("gpt-image") || model.find("gpt-image") != std::string::npos;
  int64_t n = 1;
  if (auto it = params.find("n"); it != params.end()) {
    if (it->is_number_integer()) n = it->get<int64_t>();
    if (it->is_string()) n = std::atoll(it->get<std::string>().c_str());
  }
  if (n < 1 || n > 10) {
    reply.error = BadRequest("Invalid 'n': integer must be between 1 and 10.", "n");
    return reply;
  }
  const std::string prompt = Str(params, "prompt");
  if (prompt.empty() && (edit || input_images == 0)) {
    reply.error = BadRequest("Missing required parameter: 'prompt'.", "prompt");
    return reply;
  }
  const std::string size = Str(params, "size", gpt_image ? "1024x1024" : "1024x1024");
  const std::string quality = Str(params, "quality", gpt_image ? "medium" : "standard");
  const std::string format = Str(params, "response_format", gpt_image ? "b64_json" : "url");
  if (gpt_image && params.contains("response_format")) {
    reply.error = BadRequest("Unknown parameter: 'response_format'.", "response_format");
    return reply;
  }
  Json out = {{"created", created}};
  Json data = Json::array();
  for (int64_t i = 0; i < n; ++i) {
    Json image = Json::object();
    if (format == "b64_json")
      image["b64_json"] = Base64(kPng);
    else
      image["url"] = "https://images.mock.invalid/img-" + std::to_string(created) + "-" +
                     std::to_string(i) + ".png";
    if (model == "dall-e-3") image["revised_prompt"] = prompt;
    data.push_back(std::move(image));
  }
  out["data"] = std::move(data);
  if (gpt_image) {
    const int64_t text_tokens = gen::TokensForChars(prompt.size());
    const int64_t image_tokens = 323 * input_images;
    const int64_t output = n * ImageOutputTokens(quality, size);
    out["size"] = size;
    out["quality"] = quality == "auto" ? "medium" : quality;
    out["output_format"] = Str(params, "output_format", "png");
    out["background"] = "opaque";
    out["usage"] = {
        {"total_tokens", text_tokens + image_tokens + output},
        {"input_tokens", text_tokens + image_tokens},
        {"output_tokens", output},
        {"input_tokens_details", {{"text_tokens", text_tokens}, {"image_tokens", image_tokens}}}};
  }
  reply.body = out.dump();
  return reply;
}

Reply Speech(const Json& body) {
  Reply reply;
  const std::string input = Str(body, "input");
  if (!body.contains("input")) {
    reply.error = BadRequest("Missing required parameter: 'input'.", "input");
    return reply;
  }
  if (!body.contains("voice")) {
    reply.error = BadRequest("Missing required parameter: 'voice'.", "voice");
    return reply;
  }
  if (input.size() > 4096) {
    reply.error =
        BadRequest("string too long. Expected a string with maximum length 4096.", "input");
    return reply;
  }
  const std::string format = Str(body, "response_format", "mp3");
  // About 60 ms of speech per character.
  const int64_t ms = std::max<int64_t>(100, static_cast<int64_t>(input.size()) * 60);
  std::string audio;
  if (format == "wav" || format == "pcm") {
    audio = Wav(ms);
    if (format == "pcm") audio.erase(0, 44);
    reply.content_type = format == "wav" ? "audio/wav" : "audio/pcm";
  } else {
    // A container signature followed by filler frames: enough for a client to tell the type.
    static const std::map<std::string, std::pair<std::string, std::string>> kTypes = {
        {"mp3", {"audio/mpeg", std::string("ID3\x04\0\0\0\0\0\0", 10)}},
        {"opus", {"audio/ogg", "OggS"}},
        {"aac", {"audio/aac", "\xff\xf1"}},
        {"flac", {"audio/flac", "fLaC"}}};
    auto it = kTypes.find(format);
    if (it == kTypes.end()) {
      reply.error = BadRequest("Invalid value for 'response_format': '" + format.substr(0, 32) +
                                   "'. Supported values are: 'mp3', 'opus', 'aac', 'flac', "
                                   "'wav', and 'pcm'.",
                               "response_format");
      return reply;
    }
    reply.content_type = it->second.first;
    audio = it->second.second;
    std::string frame(417, '\0');  // one 128 kbit/s 44.1 kHz MP3 frame's size
    frame[0] = '\xff';
    frame[1] = '\xfb';
    frame[2] = '\x90';
    for (int64_t t = 0; t < ms; t += 26) audio += frame;
  }
  const size_t pieces = 8;
  const size_t step = (audio.size() + pieces - 1) / pieces;
  if (Str(body, "stream_format") == "sse") {
    reply.content_type = "text/event-stream; charset=utf-8";
    for (size_t at = 0; at < audio.size(); at += step)
      reply.pieces.push_back(
          "data: " +
          Json{{"type", "speech.audio.delta"}, {"audio", Base64(audio.substr(at, step))}}.dump() +
          "\n\n");
    const int64_t in = gen::TokensForChars(input.size());
    const int64_t out = ms / 100;
    reply.pieces.push_back(
        "data: " +
        Json{{"type", "speech.audio.done"},
             {"usage", {{"input_tokens", in}, {"output_tokens", out}, {"total_tokens", in + out}}}}
            .dump() +
        "\n\n");
    return reply;
  }
  for (size_t at = 0; at < audio.size(); at += step) reply.pieces.push_back(audio.substr(at, step));
  return reply;
}

Reply Transcribe(const Form& form, bool translation) {
  Reply reply;
  auto field = [&](const char* name, std::string fallback = "") {
    auto it = form.fields.find(name);
    return it == form.fields.end() ? fallback : it->second;
  };
  auto file = form.files.find("file");
  if (file == form.files.end()) {
    reply.error = BadRequest("Missing required parameter: 'file'.", "file");
    return reply;
  }
  const std::string model = field("model");
  if (model.empty()) {
    reply.error = BadRequest("Missing required parameter: 'model'.", "model");
    return reply;
  }
  std::optional<double> seconds = WavSeconds(file->second.data);
  if (!seconds) {
    reply.error =
        BadRequest("The audio file could not be decoded or its format is not supported.", "file");
    return reply;
  }
  const bool whisper = model.starts_with("whisper") || model.find("whisper") != std::string::npos;
  const std::string format = field("response_format", "json");
  const bool stream = field("stream") == "true";
  if (translation && (stream || !whisper)) {
    reply.error = BadRequest("Translations are only available with whisper-1.", "model");
    return reply;
  }
  if (format == "verbose_json" && !whisper) {
    reply.error = BadRequest("response_format 'verbose_json' is not compatible with " + model +
                                 ", use 'json' or 'text'.",
                             "response_format");
    return reply;
  }
  // About two words a second of audio, at least one.
  const int32_t words = std::max<int32_t>(1, static_cast<int32_t>(*seconds * 2));
  const std::string text = Words(gen::Fnv1a(file->second.data.substr(0, 4096)), words);
  const int64_t audio_tokens = static_cast<int64_t>(std::ceil(*seconds * 10));
  const int64_t prompt_tokens = gen::TokensForChars(field("prompt").size());
  const int64_t output_tokens = gen::TokensForChars(text.size());
  Json token_usage = {
      {"type", "tokens"},
      {"input_tokens", audio_tokens + prompt_tokens},
      {"input_token_details", {{"text_tokens", prompt_tokens}, {"audio_tokens", audio_tokens}}},
      {"output_tokens", output_tokens},
      {"total_tokens", audio_tokens + prompt_tokens + output_tokens}};
  Json duration_usage = {{"type", "duration"}, {"seconds", std::ceil(*seconds)}};
  if (stream && !whisper) {
    reply.content_type = "text/event-stream; charset=utf-8";
    std::vector<uint32_t> cuts;
    gen::CutText(text, std::min<int32_t>(words, 8), &cuts);
    uint32_t from = 0;
    for (uint32_t cut : cuts) {
      reply.pieces.push_back(
          "data: " +
          Json{{"type", "transcript.text.delta"}, {"delta", text.substr(from, cut - from)}}.dump() +
          "\n\n");
      from = cut;
    }
    reply.pieces.push_back(
        "data: " +
        Json{{"type", "transcript.text.done"}, {"text", text}, {"usage", token_usage}}.dump() +
        "\n\n");
    return reply;
  }
  if (format == "text" || format == "srt" || format == "vtt") {
    reply.content_type = "text/plain; charset=utf-8";
    if (format == "text") {
      reply.body = text + "\n";
    } else {
      const char* sep = format == "srt" ? "," : ".";
      auto stamp = [&](double s) {
        char buf[32];
        const int64_t ms = static_cast<int64_t>(s * 1000);
        std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld%s%03lld",
                      static_cast<long long>(ms / 3600000), static_cast<long long>(ms / 60000 % 60),
                      static_cast<long long>(ms / 1000 % 60), sep,
                      static_cast<long long>(ms % 1000));
        return std::string(buf);
      };
      reply.body = (format == "vtt" ? "WEBVTT\n\n" : "1\n") + stamp(0) + " --> " + stamp(*seconds) +
                   "\n" + text + "\n\n";
    }
    return reply;
  }
  if (format != "json" && format != "verbose_json") {
    reply.error = BadRequest("Invalid value for 'response_format'.", "response_format");
    return reply;
  }
  Json out = {{"text", text}};
  if (format == "verbose_json") {
    out = {{"task", translation ? "translate" : "transcribe"},
           {"language", "english"},
           {"duration", *seconds},
           {"text", text},
           {"segments", Json::array({{{"id", 0},
                                      {"seek", 0},
                                      {"start", 0.0},
                                      {"end", *seconds},
                                      {"text", " " + text},
                                      {"tokens", Json::array({50364, 440})},
                                      {"temperature", 0.0},
                                      {"avg_logprob", -0.25},
                                      {"compression_ratio", 1.2},
                                      {"no_speech_prob", 0.01}}})}};
    if (!translation) out["usage"] = duration_usage;
  } else if (!translation) {
    out["usage"] = whisper ? duration_usage : token_usage;
  }
  reply.body = out.dump();
  return reply;
}

Reply Moderate(const Json& body, uint64_t seq) {
  Reply reply;
  auto input = body.find("input");
  if (input == body.end() || input->is_null()) {
    reply.error = BadRequest("Missing required parameter: 'input'.", "input");
    return reply;
  }
  size_t count = 1;
  if (input->is_array()) {
    // An array of strings is one result each; an array of multimodal parts is one input.
    bool strings = !input->empty() && (*input)[0].is_string();
    count = strings ? input->size() : 1;
  } else if (!input->is_string()) {
    reply.error = BadRequest("Invalid type for 'input'.", "input");
    return reply;
  }
  static const char* kCategories[] = {"hate",
                                      "hate/threatening",
                                      "harassment",
                                      "harassment/threatening",
                                      "illicit",
                                      "illicit/violent",
                                      "self-harm",
                                      "self-harm/intent",
                                      "self-harm/instructions",
                                      "sexual",
                                      "sexual/minors",
                                      "violence",
                                      "violence/graphic"};
  Json results = Json::array();
  for (size_t i = 0; i < count; ++i) {
    Json categories = Json::object(), scores = Json::object(), applied = Json::object();
    for (const char* c : kCategories) {
      categories[c] = false;
      scores[c] = 0.0001;
      applied[c] = Json::array({"text"});
    }
    results.push_back({{"flagged", false},
                       {"categories", categories},
                       {"category_scores", scores},
                       {"category_applied_input_types", applied}});
  }
  char id[40];
  std::snprintf(id, sizeof id, "modr-%016llx", static_cast<unsigned long long>(seq));
  reply.body = Json{
      {"id", id},
      {"model", Str(body, "model", "omni-moderation-latest")},
      {"results",
       results}}.dump();
  return reply;
}

bool PieceStream::NextEvent(std::string& out, bool* content) {
  if (next_ >= pieces_.size()) return false;
  out += pieces_[next_++];
  *content = true;
  return true;
}

}  // namespace tollgate::mock::media
