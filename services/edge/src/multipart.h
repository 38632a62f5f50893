// multipart/form-data (RFC 7578) as the edge needs it: the form's fields, read incrementally from
// bytes in any chunking, in bounded memory, so the same reader runs over a whole body (images) and
// over a streamed one as it passes (audio uploads, upload.h). Pure logic, unit-tested at every
// split (test/multipart_test.cpp).
//
// The reader keeps each text field's value (up to kMaxFieldValue bytes) and, of a file part, its
// size and first kMaxFileHead bytes (enough for a WAV header); nothing else of a file is held.
// The buffer it keeps between feeds is bounded by the part headers' limit (kMaxPartHeaders) plus
// the delimiter's length, whatever the size of the body.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::edge {

// The boundary parameter of a multipart/form-data Content-Type; nullopt when the type is not
// multipart/form-data or the boundary is missing or invalid (1..70 characters).
std::optional<std::string> MultipartBoundary(std::string_view content_type);

struct MultipartPart {
  std::string name;          // Content-Disposition's name
  std::string filename;      // its filename ("" for a text field)
  bool is_file = false;      // a filename was given
  std::string content_type;  // the part's Content-Type ("" when absent)
  // A text field's value (cut at kMaxFieldValue: `truncated`); a file's first kMaxFileHead bytes.
  std::string value;
  bool truncated = false;
  uint64_t size = 0;         // the part's content bytes
  uint64_t offset = 0;       // where its content starts in the body
  uint64_t part_offset = 0;  // where its delimiter ("--boundary") starts in the body
  bool complete = false;     // its closing delimiter was read: value and size are final
};

class MultipartReader final {
 public:
  static constexpr size_t kMaxParts = 64;
  static constexpr size_t kMaxPartHeaders = 8 * 1024;
  static constexpr size_t kMaxFieldValue = 64 * 1024;
  static constexpr size_t kMaxFileHead = 4 * 1024;

  explicit MultipartReader(std::string boundary);

  // Reads the next bytes of the body; false once the body is malformed (error() says why). Bytes
  // after the closing delimiter are ignored.
  bool Feed(std::string_view bytes);
  // After the last Feed: whether the body ended with its closing delimiter.
  bool Finish();

  const std::vector<MultipartPart>& parts() const { return parts_; }
  const MultipartPart* Find(std::string_view name) const;
  bool done() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kFailed; }
  // Body bytes fed so far (what follows the closing delimiter included).
  uint64_t fed() const { return fed_; }
  const std::string& error() const { return error_; }

 private:
  enum class State { kContent, kAfterDelimiter, kHeaders, kDone, kFailed };
  bool Fail(std::string why);
  bool ParseHeaders(std::string_view block);
  void Take(std::string_view content);  // content of the current part (or the preamble)

  std::string delimiter_;  // "\r\n--" + boundary
  State state_ = State::kContent;
  std::string buffer_;
  uint64_t buffer_at_ = 0;  // body offset of buffer_[0] (the body is preceded by a virtual CRLF)
  bool in_part_ = false;    // content belongs to a part (not the preamble)
  std::vector<MultipartPart> parts_;
  std::string error_;
  uint64_t fed_ = 0;
};

// A WAV file's duration from its header (RIFF/WAVE, the fmt chunk's byte rate and the data
// chunk's size), in milliseconds, rounded up; nullopt when `head` is not such a header. `size`
// is the whole file's size: a data chunk that claims more than the file holds is cut to it.
std::optional<int64_t> WavDurationMs(std::string_view head, uint64_t size);

}  // namespace tollgate::edge
