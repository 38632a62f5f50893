// The streamed multipart upload (upload.h) fed by a client body cut at every split: what is read
// ahead before routing, what each attempt sends (the model replaced, the rest streamed straight
// through or replayed from the held bytes), the trailing fields seen on the way, the spill file
// (unnamed: nothing in the directory), and the failures a client can cause.
#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <filesystem>
#include <random>

#include "src/upload.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;

const std::string kBoundary = "----upload-b0undary";

std::string Part(const std::string& name, const std::string& filename, const std::string& value) {
  std::string out = "--" + kBoundary + "\r\nContent-Disposition: form-data; name=\"" + name + "\"";
  if (!filename.empty()) out += "; filename=\"" + filename + "\"\r\nContent-Type: audio/wav";
  return out + "\r\n\r\n" + value + "\r\n";
}
std::string End() { return "--" + kBoundary + "--\r\n"; }

// Bytes that look like a delimiter's start inside the file must not end it.
std::string Audio(size_t n) {
  std::string out = "RIFF" + std::string(n - 4, '\x01');
  const std::string trap = "\r\n--" + kBoundary.substr(0, 6);
  for (size_t at = 100; at + trap.size() < n; at += 997) out.replace(at, trap.size(), trap);
  return out;
}

// A client body handed out in the given pieces (a failure instead of piece `fail_at`).
class FakeClient final : public BodyStream {
 public:
  FakeClient(std::vector<std::string> pieces, bool with_length, size_t fail_at = SIZE_MAX)
      : pieces_(std::move(pieces)), fail_at_(fail_at) {
    uint64_t n = 0;
    for (const auto& p : pieces_) n += p.size();
    if (with_length) length_ = n;
    done_ = pieces_.empty();
  }
  std::optional<uint64_t> content_length() const override { return length_; }
  bool done() const override { return done_; }
  uint64_t bytes_read() const override { return read_; }
  const std::optional<Failure>& failure() const override { return failure_; }
  asio::awaitable<bool> Read(std::string& piece) override {
    piece.clear();
    if (failure_) co_return false;
    if (done_) co_return true;
    if (next_ == fail_at_) {
      failure_ = Failure{0, "gone"};
      co_return false;
    }
    piece = pieces_[next_++];
    read_ += piece.size();
    done_ = next_ == pieces_.size();
    co_return true;
  }
  size_t pieces_read() const { return next_; }

 private:
  std::vector<std::string> pieces_;
  size_t fail_at_;
  std::optional<uint64_t> length_;
  bool done_ = false;
  size_t next_ = 0;
  uint64_t read_ = 0;
  std::optional<Failure> failure_;
};

template <class T>
T RunCoro(asio::awaitable<T> work) {
  asio::io_context io;
  auto result = asio::co_spawn(io, std::move(work), asio::use_future);
  io.run();
  return result.get();
}

// Everything one attempt sends; nullopt when a read failed.
std::optional<std::string> Drain(BodyStream& body) {
  return RunCoro([&]() -> asio::awaitable<std::optional<std::string>> {
    std::string out, piece;
    while (!body.done()) {
      if (!co_await body.Read(piece)) co_return std::nullopt;
      EXPECT_LE(piece.size(), 64u * 1024);
      out += piece;
    }
    co_return out;
  }());
}

std::vector<std::string> Cut(const std::string& body, size_t a, size_t b) {
  std::vector<std::string> out;
  for (auto [from, to] : {std::pair{size_t{0}, a}, {a, b}, {b, body.size()}})
    if (to > from) out.push_back(body.substr(from, to - from));
  return out;
}

class UploadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("tollgate-upload-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  size_t FilesInDir() const {
    if (!std::filesystem::exists(dir_)) return 0;
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir_)) ++n;
    return n;
  }
  std::filesystem::path dir_;
};

TEST_F(UploadTest, FieldsFirstHoldOnlyTheFileHeadAndStreamTheRestAtEverySplit) {
  const std::string audio = Audio(6000);
  const std::string head = Part("model", "", "whisper-1") + Part("language", "", "en");
  const std::string body =
      "preamble\r\n" + head + Part("file", "a.wav", audio) + Part("stream", "", "true") + End();
  std::string expected = body;
  expected.replace(expected.find("whisper-1"), 9, "gpt-4o-transcribe");
  // The read-ahead ends with the piece that completes the file's head (the reader holds back what
  // could still be the start of a delimiter: its length less one).
  const size_t head_end =
      body.find("RIFF") + MultipartReader::kMaxFileHead + ("\r\n--" + kBoundary).size() - 1;
  const size_t file_closed = body.find("RIFF") + audio.size() + ("\r\n--" + kBoundary).size();
  for (size_t split = 0; split <= body.size(); ++split) {
    for (size_t second :
         {split, std::min(body.size(), split + 1), std::min(body.size(), split + 4096)}) {
      const auto pieces = Cut(body, split, second);
      // The first piece that ends past the head ends the read-ahead, unless it also ended the
      // file (then the rest of the body is read too).
      size_t end = 0;
      for (const auto& piece : pieces) {
        end += piece.size();
        if (end >= head_end) break;
      }
      const bool whole = end >= file_closed;
      FakeClient client(pieces, /*with_length=*/split % 2 == 0);
      StreamedForm upload(client, kBoundary, "file", dir_.string());
      ASSERT_TRUE(RunCoro(upload.ReadAhead())) << split;
      ASSERT_EQ(upload.whole(), whole) << split << " " << second;
      EXPECT_FALSE(upload.spilled());
      const MultipartPart* model = upload.form().Find("model");
      ASSERT_NE(model, nullptr);
      EXPECT_EQ(model->value, "whisper-1");
      const MultipartPart* file = upload.form().Find("file");
      ASSERT_NE(file, nullptr);
      EXPECT_EQ(file->value, audio.substr(0, MultipartReader::kMaxFileHead));
      EXPECT_EQ(upload.form().Find("stream") != nullptr, whole) << split;
      // Held: no more than the fields, the file's head and one client piece.
      if (!whole)
        EXPECT_LE(upload.held_bytes(), head_end + std::max(split, second - split)) << split;
      upload.SetModelSpan(model->offset, model->size);
      std::string trailing;
      upload.on_end = [&](const MultipartReader& form) -> std::optional<BodyStream::Failure> {
        trailing = form.Find("stream") ? form.Find("stream")->value : "(none)";
        return std::nullopt;
      };
      ASSERT_TRUE(upload.Replayable());
      BodyStream* attempt = upload.Open("gpt-4o-transcribe");
      ASSERT_NE(attempt, nullptr);
      if (split % 2 == 0) EXPECT_EQ(attempt->content_length(), expected.size());
      auto sent = Drain(*attempt);
      ASSERT_TRUE(sent) << split;
      ASSERT_EQ(*sent, expected) << split;
      EXPECT_EQ(trailing, whole ? "" : "true") << split;
      EXPECT_EQ(upload.form().Find("stream")->value, "true");
      EXPECT_EQ(upload.form().Find("file")->size, audio.size());
      // The client's rest went to that attempt: another cannot send it again (all of it held:
      // it can).
      EXPECT_EQ(upload.Replayable(), whole);
      EXPECT_EQ(upload.Open("x") != nullptr, whole);
    }
  }
  EXPECT_EQ(FilesInDir(), 0u);
}

TEST_F(UploadTest, FileFirstIsHeldWholeSpilledToAnUnnamedFileAndReplayedAtEverySplit) {
  const std::string audio = Audio(5000);
  const std::string body = Part("file", "a.wav", audio) + Part("model", "", "whisper-1") +
                           Part("response_format", "", "verbose_json") + End();
  std::string expected = body;
  expected.replace(expected.find("whisper-1"), 9, "stt-upstream");
  for (size_t split = 0; split <= body.size(); split += 7) {
    FakeClient client(Cut(body, split, std::min(body.size(), split + 1000)), split % 2 == 0);
    // A small memory bound, so this body spills.
    StreamedForm upload(client, kBoundary, "file", dir_.string(), /*memory_bytes=*/1024);
    ASSERT_TRUE(RunCoro(upload.ReadAhead())) << split;
    EXPECT_TRUE(upload.whole());
    EXPECT_TRUE(upload.spilled());
    EXPECT_EQ(upload.held_bytes(), body.size());
    EXPECT_EQ(FilesInDir(), 0u) << "the spill file has a name";
    const MultipartPart* model = upload.form().Find("model");
    ASSERT_NE(model, nullptr);
    EXPECT_EQ(upload.form().Find("response_format")->value, "verbose_json");
    upload.SetModelSpan(model->offset, model->size);
    // Every attempt gets the whole body (failover), with its own model.
    for (int attempt = 0; attempt < 2; ++attempt) {
      ASSERT_TRUE(upload.Replayable());
      BodyStream* stream = upload.Open("stt-upstream");
      EXPECT_EQ(stream->content_length(), expected.size());
      auto sent = Drain(*stream);
      ASSERT_TRUE(sent);
      ASSERT_EQ(*sent, expected) << split;
    }
  }
  // The directory was made for the spill files, mode 700.
  EXPECT_EQ(std::filesystem::status(dir_).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_all);
}

TEST_F(UploadTest, ASmallFileFirstStaysInMemory) {
  const std::string body =
      Part("file", "a.wav", Audio(300)) + Part("model", "", "whisper-1") + End();
  FakeClient client({body}, true);
  StreamedForm upload(client, kBoundary, "file", "");  // no spill directory needed
  ASSERT_TRUE(RunCoro(upload.ReadAhead()));
  EXPECT_TRUE(upload.whole());
  EXPECT_FALSE(upload.spilled());
}

TEST_F(UploadTest, ClientFailuresAndMalformedFormsAreReported) {
  const std::string body = Part("model", "", "whisper-1") + Part("file", "a.wav", Audio(9000)) +
                           Part("prompt", "", "p") + End();
  {  // Never closed: 400 once the body ends.
    FakeClient client({Part("model", "", "whisper-1")}, true);
    StreamedForm upload(client, kBoundary, "file", dir_.string());
    EXPECT_FALSE(RunCoro(upload.ReadAhead()));
    EXPECT_EQ(upload.failure()->status, 400);
    EXPECT_NE(upload.failure()->message.find("multipart"), std::string::npos);
  }
  {  // Gone during the read-ahead: status 0 (nobody to answer).
    FakeClient client(Cut(body, 10, 20), true, /*fail_at=*/1);
    StreamedForm upload(client, kBoundary, "file", dir_.string());
    EXPECT_FALSE(RunCoro(upload.ReadAhead()));
    EXPECT_EQ(upload.failure()->status, 0);
  }
  {  // Gone while an attempt streams the rest: that read fails, nothing can be replayed.
    FakeClient client(Cut(body, 6000, 7000), true, /*fail_at=*/2);
    StreamedForm upload(client, kBoundary, "file", dir_.string());
    ASSERT_TRUE(RunCoro(upload.ReadAhead()));
    BodyStream* attempt = upload.Open("m");
    EXPECT_FALSE(Drain(*attempt));
    EXPECT_EQ(attempt->failure()->status, 0);
    EXPECT_FALSE(upload.Replayable());
  }
  {  // A trailing field refused on the way: the read fails with the refusal.
    FakeClient client(Cut(body, 6000, 7000), true);
    StreamedForm upload(client, kBoundary, "file", dir_.string());
    ASSERT_TRUE(RunCoro(upload.ReadAhead()));
    upload.on_end = [](const MultipartReader& form) -> std::optional<BodyStream::Failure> {
      if (form.Find("prompt")) return BodyStream::Failure{400, "no prompt"};
      return std::nullopt;
    };
    BodyStream* attempt = upload.Open("m");
    EXPECT_FALSE(Drain(*attempt));
    EXPECT_EQ(attempt->failure()->status, 400);
    EXPECT_EQ(attempt->failure()->message, "no prompt");
  }
  {  // Garbage after the held head: 400 from the attempt's read.
    const std::string bad =
        Part("model", "", "m") + Part("file", "a.wav", Audio(9000)) + "--" + kBoundary + "X\r\n";
    FakeClient client(Cut(bad, 6000, 7000), true);
    StreamedForm upload(client, kBoundary, "file", dir_.string());
    ASSERT_TRUE(RunCoro(upload.ReadAhead()));
    BodyStream* attempt = upload.Open("m");
    EXPECT_FALSE(Drain(*attempt));
    EXPECT_EQ(attempt->failure()->status, 400);
  }
  {  // A spill directory that cannot be made: 500, said before routing.
    FakeClient client(Cut(Part("file", "a.wav", Audio(9000)), 100, 200), true);
    StreamedForm upload(client, kBoundary, "file", "/proc/no-such-dir/uploads", 1024);
    EXPECT_FALSE(RunCoro(upload.ReadAhead()));
    EXPECT_EQ(upload.failure()->status, 500);
  }
}

TEST_F(UploadTest, HeldBytesReadBackWhatWasAppendedAcrossTheSpill) {
  HeldBytes held(dir_.string(), 100);
  std::string all;
  std::mt19937 rng(7);
  for (int i = 0; i < 50; ++i) {
    std::string piece(rng() % 40, static_cast<char>('a' + i % 26));
    ASSERT_TRUE(held.Append(piece));
    all += piece;
  }
  EXPECT_TRUE(held.spilled());
  EXPECT_EQ(held.size(), all.size());
  std::string out;
  for (uint64_t at = 0; at < all.size(); at += 13) {
    ASSERT_TRUE(held.Read(at, 17, out));
    EXPECT_EQ(out, all.substr(at, 17));
  }
  EXPECT_EQ(FilesInDir(), 0u);
}

}  // namespace
}  // namespace tollgate::edge
