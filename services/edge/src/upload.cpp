#include "src/upload.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tollgate::edge {
namespace {

using boost::asio::awaitable;

// What one Read of an attempt hands out from the held bytes (as a client read does at most).
constexpr size_t kPieceBytes = 64 * 1024;

// mkdir -p, mode 700: uploads are the users' data.
bool MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    if (::mkdir(dir.substr(0, pos).c_str(), 0700) != 0 && errno != EEXIST) return false;
  }
  return true;
}

int OpenUnnamed(const std::string& dir) {
#ifdef O_TMPFILE
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) return fd;
#endif
  // A file system without O_TMPFILE: a named file, unlinked at once.
  std::string path = dir + "/upload-XXXXXX";
  int fd2 = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd2 >= 0) ::unlink(path.c_str());
  return fd2;
}

}  // namespace

HeldBytes::HeldBytes(std::string dir, size_t memory_bytes)
    : dir_(std::move(dir)), memory_bytes_(memory_bytes) {}

HeldBytes::~HeldBytes() {
  if (fd_ >= 0) ::close(fd_);
}

bool HeldBytes::Spill() {
  if (dir_.empty()) {
    error_ = "no spill directory";
    return false;
  }
  fd_ = OpenUnnamed(dir_);
  if (fd_ < 0 && errno == ENOENT && MakeDirs(dir_)) fd_ = OpenUnnamed(dir_);
  if (fd_ < 0) {
    error_ = "cannot create a spill file in " + dir_ + ": " + std::strerror(errno);
    return false;
  }
  std::string memory;
  memory.swap(memory_);
  size_ = 0;
  return Append(memory);
}

bool HeldBytes::Append(std::string_view bytes) {
  if (fd_ < 0 && memory_.size() + bytes.size() <= memory_bytes_) {
    memory_.append(bytes);
    size_ += bytes.size();
    return true;
  }
  if (fd_ < 0) return Spill() && Append(bytes);
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(size_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error_ = std::string("cannot write the spill file: ") + std::strerror(errno);
      return false;
    }
    size_ += static_cast<uint64_t>(n);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool HeldBytes::Read(uint64_t offset, size_t max, std::string& out) const {
  out.clear();
  if (offset >= size_) return true;
  const size_t n = static_cast<size_t>(std::min<uint64_t>(max, size_ - offset));
  if (fd_ < 0) {
    out.assign(memory_, static_cast<size_t>(offset), n);
    return true;
  }
  out.resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd_, out.data() + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// One attempt's reading of the body: the held bytes with the model's value replaced, then the
// client's rest as it arrives (parsed on the way, so the trailing fields are known).
class StreamedForm::Attempt final : public BodyStream {
 public:
  Attempt(StreamedForm& form, std::string model)
      : form_(form), model_(std::move(model)), model_sent_(!form.model_span_) {}

  std::optional<uint64_t> content_length() const override {
    auto adjust = [&](uint64_t n) {
      return form_.model_span_ ? n - form_.model_len_ + model_.size() : n;
    };
    if (auto n = form_.client_.content_length()) return adjust(*n);
    if (form_.whole()) return adjust(form_.held_.size());
    return std::nullopt;
  }
  bool done() const override { return done_; }
  uint64_t bytes_read() const override { return out_; }
  const std::optional<Failure>& failure() const override { return failure_; }

  awaitable<bool> Read(std::string& piece) override {
    piece.clear();
    if (failure_) co_return false;
    if (done_) co_return true;
    const uint64_t held = form_.held_.size();
    if (!model_sent_ && pos_ == form_.model_at_) {
      piece = model_;
      model_sent_ = true;
      pos_ = form_.model_at_ + form_.model_len_;
    } else if (pos_ < held) {
      const uint64_t end = model_sent_ ? held : form_.model_at_;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kPieceBytes, end - pos_));
      if (!form_.held_.Read(pos_, n, piece) || piece.size() != n) {
        failure_ = Failure{500, "The upload could not be read back from the edge's spill file."};
        co_return false;
      }
      pos_ += n;
    } else if (!form_.client_.done()) {
      form_.rest_read_ = true;
      if (!co_await form_.client_.Read(piece)) {
        failure_ = form_.client_.failure().value_or(Failure{0, "The client's body failed."});
        co_return false;
      }
      MultipartReader& reader = form_.form_;
      if (!reader.Feed(piece) || (form_.client_.done() && !reader.Finish())) {
        failure_ = Failure{400, "Could not parse the multipart form: " + reader.error()};
        co_return false;
      }
      if (form_.client_.done() && form_.on_end) {
        if (auto refused = form_.on_end(reader)) {
          failure_ = std::move(refused);
          co_return false;
        }
      }
    }
    out_ += piece.size();
    done_ = model_sent_ && pos_ >= held && form_.client_.done();
    co_return true;
  }

 private:
  StreamedForm& form_;
  const std::string model_;
  bool model_sent_;
  uint64_t pos_ = 0;  // in the held bytes
  uint64_t out_ = 0;
  bool done_ = false;
  std::optional<Failure> failure_;
};

StreamedForm::StreamedForm(BodyStream& client, std::string boundary, std::string file_field,
                           std::string spill_dir, size_t memory_bytes)
    : client_(client),
      file_field_(std::move(file_field)),
      form_(std::move(boundary)),
      held_(std::move(spill_dir), memory_bytes) {}

StreamedForm::~StreamedForm() = default;

bool StreamedForm::ReadAheadDone() const {
  if (held_.spilled()) return false;  // holding the file: all of the body, to replay it
  const MultipartPart* model = form_.Find("model");
  const MultipartPart* file = form_.Find(file_field_);
  return model != nullptr && model->complete && file != nullptr && file->is_file &&
         !file->complete && file->value.size() >= MultipartReader::kMaxFileHead;
}

awaitable<bool> StreamedForm::ReadAhead() {
  std::string piece;
  while (!client_.done()) {
    if (ReadAheadDone()) co_return true;
    if (!co_await client_.Read(piece)) {
      failure_ = client_.failure().value_or(BodyStream::Failure{0, "The client's body failed."});
      co_return false;
    }
    if (!held_.Append(piece)) {
      failure_ = BodyStream::Failure{500, "The upload could not be buffered: " + held_.error()};
      co_return false;
    }
    if (!form_.Feed(piece)) {
      failure_ = BodyStream::Failure{400, "Could not parse the multipart form: " + form_.error()};
      co_return false;
    }
  }
  if (!form_.Finish()) {
    failure_ = BodyStream::Failure{400, "Could not parse the multipart form: " + form_.error()};
    co_return false;
  }
  co_return true;
}

void StreamedForm::SetModelSpan(uint64_t at, uint64_t len) {
  model_at_ = at;
  model_len_ = len;
  model_span_ = at + len <= held_.size();
}

bool StreamedForm::Replayable() const { return !rest_read_ && !failure_; }

BodyStream* StreamedForm::Open(std::string_view model) {
  if (!Replayable()) return nullptr;
  attempts_.push_back(std::make_unique<Attempt>(*this, std::string(model)));
  return attempts_.back().get();
}

}  // namespace tollgate::edge
