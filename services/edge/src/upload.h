// A multipart upload streamed from the client to the upstream (issue #12: audio transcriptions
// and translations, media.cpp), in bounded memory whatever the file's size.
//
// Routing needs form fields (`model`, ...) that may come before or after the file part (the
// openai SDKs send `file` first). StreamedForm::ReadAhead reads the client's body (BodyStream,
// http.h) into HeldBytes, the MultipartReader (multipart.h) parsing it as it comes, until:
// - the fields came first: `model` is complete and the file part has begun with at least
//   MultipartReader::kMaxFileHead bytes (its head: a WAV header for the duration). Only these
//   leading bytes are held (in memory); the rest of the file is streamed straight through when
//   the attempt sends it. Such an upload can be sent again (failover) only while none of that
//   rest was read: once an attempt started reading it, a later failure is the client's answer.
// - otherwise (the file came first, or no `model`), the body's end: all of it is held. Held bytes
//   stay in memory up to HeldBytes::kMemoryBytes, then all of them go to an unnamed file in the
//   edge's spill directory (O_TMPFILE: it never has a name, so nothing is left behind even if the
//   edge is killed; where O_TMPFILE is not supported, a file unlinked as soon as it is created),
//   bounded like the body by edge.max_upload_bytes, closed (and so freed) with the request. Such
//   an upload is replayed whole for every attempt (failover before the first byte of an answer).
// Each attempt reads its own BodyStream (Open) with the model's value replaced; what it reads of
// the client past the held bytes still goes through the same MultipartReader, so the fields after
// the file are known (on_end) before the upstream's answer is read.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "src/http.h"
#include "src/multipart.h"
#include "src/openai.h"

namespace tollgate::edge {

// Bytes kept in memory up to kMemoryBytes, then all of them in an unnamed file in `dir` (created,
// mode 700, when missing). The file is closed, and so gone, with this object.
class HeldBytes final {
 public:
  static constexpr size_t kMemoryBytes = 256 * 1024;

  explicit HeldBytes(std::string dir, size_t memory_bytes = kMemoryBytes);
  ~HeldBytes();
  HeldBytes(const HeldBytes&) = delete;
  HeldBytes& operator=(const HeldBytes&) = delete;

  // false: the spill file could not be made or written (error() says why).
  bool Append(std::string_view bytes);
  // Replaces `out` with up to `max` bytes from `offset`; false on a read error.
  bool Read(uint64_t offset, size_t max, std::string& out) const;
  uint64_t size() const { return size_; }
  bool spilled() const { return fd_ >= 0; }
  const std::string& error() const { return error_; }

 private:
  bool Spill();

  std::string dir_;
  size_t memory_bytes_;
  std::string memory_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string error_;
};

class StreamedForm final : public RequestUpload {
 public:
  // `file_field`: the form's file part that may be streamed straight through ("file").
  StreamedForm(BodyStream& client, std::string boundary, std::string file_field,
               std::string spill_dir, size_t memory_bytes = HeldBytes::kMemoryBytes);
  ~StreamedForm() override;

  // Reads ahead (see above). false: the body cannot be used; failure() says why (status 0: the
  // client is gone; 400 a malformed form; 413 over edge.max_upload_bytes; 500 the spill file).
  boost::asio::awaitable<bool> ReadAhead();

  const MultipartReader& form() const { return form_; }
  // The whole body was read ahead (held: memory or spill file).
  bool whole() const { return client_.done(); }
  bool spilled() const { return held_.spilled(); }
  uint64_t held_bytes() const { return held_.size(); }
  // Payload bytes read from the client so far.
  uint64_t client_bytes() const { return client_.bytes_read(); }
  std::optional<uint64_t> client_length() const { return client_.content_length(); }
  const std::optional<BodyStream::Failure>& failure() const { return failure_; }

  // Where the model's value lies in the body ([at, at + len), in the held bytes): each attempt
  // sends its own model there.
  void SetModelSpan(uint64_t at, uint64_t len);
  // Runs when the client's body ends while an attempt streams it: the fields after the file are
  // known. A failure it returns fails that read (the upstream call ends, the client gets it).
  std::function<std::optional<BodyStream::Failure>(const MultipartReader&)> on_end;

  bool Replayable() const override;
  BodyStream* Open(std::string_view model) override;

 private:
  class Attempt;
  bool ReadAheadDone() const;

  BodyStream& client_;
  std::string file_field_;
  MultipartReader form_;
  HeldBytes held_;
  uint64_t model_at_ = 0;
  uint64_t model_len_ = 0;
  bool model_span_ = false;
  bool rest_read_ = false;  // an attempt read the client's body past the held bytes
  std::optional<BodyStream::Failure> failure_;
  std::vector<std::unique_ptr<Attempt>> attempts_;
};

}  // namespace tollgate::edge
