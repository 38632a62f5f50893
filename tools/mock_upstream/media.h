// The mock's media endpoints (OpenAI's images, audio and moderations APIs), as pure reply logic:
// what a real provider answers, shaped as the OpenAI spec says. No Beast here (server.cpp sends).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mock_upstream.h"

namespace tollgate::mock::media {

// A multipart/form-data body, whole: text fields and files by name (the last of a name wins;
// `image[]` parts are all kept in `images`).
struct Form {
  std::map<std::string, std::string> fields;
  struct File {
    std::string filename;
    std::string content_type;
    std::string data;
  };
  std::map<std::string, File> files;
  int32_t images = 0;  // image / image[] files
};
std::optional<Form> ParseForm(std::string_view content_type, std::string_view body,
                              std::string* error);

// A WAV file's duration in seconds (RIFF header: fmt byte rate, data size); nullopt otherwise.
std::optional<double> WavSeconds(std::string_view data);

// A reply: status 200 with `body` of `content_type`, or `events` to stream (SSE events, or binary
// pieces for audio) under `content_type`; `error` set when the request is refused.
struct Reply {
  std::optional<ApiError> error;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::string> pieces;  // streamed instead of body when not empty
};

// POST /v1/images/generations (JSON), /v1/images/edits and /variations (multipart; `fields`
// are the form's text fields as JSON strings).
Reply Images(const nlohmann::json& params, int32_t input_images, bool edit, int64_t created);
// POST /v1/audio/speech: audio bytes of the requested format in pieces, or SSE events.
Reply Speech(const nlohmann::json& body);
// POST /v1/audio/transcriptions and /translations.
Reply Transcribe(const Form& form, bool translation);
// POST /v1/moderations.
Reply Moderate(const nlohmann::json& body, uint64_t seq);

// Pieces sent one by one (binary chunks or whole SSE events).
class PieceStream final : public EventStream {
 public:
  explicit PieceStream(std::vector<std::string> pieces) : pieces_(std::move(pieces)) {}
  bool NextEvent(std::string& out, bool* content) override;
  bool finished() const override { return next_ >= pieces_.size(); }

 private:
  std::vector<std::string> pieces_;
  size_t next_ = 0;
};

}  // namespace tollgate::mock::media
