#include "src/multipart.h"

#include <algorithm>
#include <cctype>

namespace tollgate::edge {
namespace {

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Parameters of a header value after its first token: `; name="value"; other=token`. Quoted
// strings may escape with a backslash.
std::vector<std::pair<std::string, std::string>> Params(std::string_view s) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t i = s.find(';');
  while (i != std::string_view::npos && i < s.size()) {
    ++i;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    size_t eq = s.find('=', i);
    if (eq == std::string_view::npos) break;
    std::string name(Trim(s.substr(i, eq - i)));
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    i = eq + 1;
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    std::string value;
    if (i < s.size() && s[i] == '"') {
      for (++i; i < s.size() && s[i] != '"'; ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) ++i;
        value += s[i];
      }
      i = s.find(';', i);
    } else {
      size_t end = s.find(';', i);
      value = std::string(Trim(s.substr(i, end == std::string_view::npos ? end : end - i)));
      i = end;
    }
    out.emplace_back(std::move(name), std::move(value));
  }
  return out;
}

uint32_t Le32(std::string_view s, size_t at) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[at])) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3])) << 24;
}

}  // namespace

std::optional<std::string> MultipartBoundary(std::string_view content_type) {
  std::string_view type = Trim(content_type.substr(0, content_type.find(';')));
  if (!IEquals(type, "multipart/form-data")) return std::nullopt;
  for (auto& [name, value] : Params(content_type)) {
    if (name != "boundary") continue;
    if (value.empty() || value.size() > 70) return std::nullopt;
    for (unsigned char c : value)
      if (c < 0x20 || c > 0x7e) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

MultipartReader::MultipartReader(std::string boundary)
    : delimiter_("\r\n--" + boundary), buffer_("\r\n") {}

bool MultipartReader::Fail(std::string why) {
  state_ = State::kFailed;
  error_ = std::move(why);
  buffer_.clear();
  return false;
}

const MultipartPart* MultipartReader::Find(std::string_view name) const {
  for (const auto& part : parts_)
    if (part.name == name) return &part;
  return nullptr;
}

void MultipartReader::Take(std::string_view content) {
  if (!in_part_ || content.empty()) return;
  MultipartPart& part = parts_.back();
  part.size += content.size();
  const size_t keep = part.is_file ? kMaxFileHead : kMaxFieldValue;
  if (part.value.size() < keep) part.value.append(content.substr(0, keep - part.value.size()));
  if (!part.is_file && part.size > kMaxFieldValue) part.truncated = true;
}

bool MultipartReader::ParseHeaders(std::string_view block) {
  MultipartPart& part = parts_.back();
  bool disposition = false;
  while (!block.empty()) {
    size_t end = block.find("\r\n");
    std::string_view line = block.substr(0, end);
    block = end == std::string_view::npos ? std::string_view() : block.substr(end + 2);
    if (line.empty()) continue;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return Fail("A multipart part header has no colon.");
    std::string_view name = Trim(line.substr(0, colon));
    std::string_view value = Trim(line.substr(colon + 1));
    if (IEquals(name, "content-disposition")) {
      if (!IEquals(Trim(value.substr(0, value.find(';'))), "form-data"))
        return Fail("A multipart part's Content-Disposition is not form-data.");
      disposition = true;
      for (auto& [param, v] : Params(value)) {
        if (param == "name") part.name = v;
        if (param == "filename") {
          part.filename = v;
          part.is_file = true;
        }
      }
    } else if (IEquals(name, "content-type")) {
      part.content_type = std::string(value.substr(0, 256));
    }
  }
  if (!disposition || part.name.empty())
    return Fail("A multipart part has no Content-Disposition with a name.");
  return true;
}

bool MultipartReader::Feed(std::string_view bytes) {
  fed_ += bytes.size();
  if (state_ == State::kFailed) return false;
  if (state_ == State::kDone) return true;
  buffer_.append(bytes);
  // Body offset of buffer_[i]: buffer_at_ + i - 2 (the virtual CRLF before the body).
  auto erase = [&](size_t n) {
    buffer_.erase(0, n);
    buffer_at_ += n;
  };
  for (;;) {
    switch (state_) {
      case State::kContent: {
        size_t at = buffer_.find(delimiter_);
        if (at == std::string::npos) {
          // Keep what could still be the start of a delimiter.
          size_t keep = std::min(buffer_.size(), delimiter_.size() - 1);
          Take(std::string_view(buffer_).substr(0, buffer_.size() - keep));
          erase(buffer_.size() - keep);
          return true;
        }
        Take(std::string_view(buffer_).substr(0, at));
        erase(at + delimiter_.size());
        if (in_part_) parts_.back().complete = true;
        in_part_ = false;
        state_ = State::kAfterDelimiter;
        break;
      }
      case State::kAfterDelimiter: {
        if (buffer_.size() < 2) return true;
        if (buffer_.compare(0, 2, "--") == 0) {
          state_ = State::kDone;
          buffer_.clear();
          return true;
        }
        size_t crlf = buffer_.find("\r\n");
        size_t scanned = crlf == std::string::npos ? buffer_.size() : crlf;
        for (size_t i = 0; i < scanned; ++i)
          if (buffer_[i] != ' ' && buffer_[i] != '\t')
            return Fail("A multipart delimiter is followed by something other than a line end.");
        if (crlf == std::string::npos) {
          if (buffer_.size() > 256) return Fail("A multipart delimiter line is too long.");
          return true;
        }
        if (parts_.size() >= kMaxParts)
          return Fail("The multipart body has more than " + std::to_string(kMaxParts) + " parts.");
        MultipartPart part;
        // The delimiter's "--" began delimiter_.size() - 2 bytes before buffer_[0].
        part.part_offset = buffer_at_ - (delimiter_.size() - 2) - 2;
        parts_.push_back(std::move(part));
        erase(crlf + 2);
        state_ = State::kHeaders;
        break;
      }
      case State::kHeaders: {
        size_t end = buffer_.compare(0, 2, "\r\n") == 0 ? 0 : buffer_.find("\r\n\r\n");
        if (end == std::string::npos) {
          if (buffer_.size() > kMaxPartHeaders)
            return Fail("A multipart part's headers are larger than " +
                        std::to_string(kMaxPartHeaders) + " bytes.");
          if (buffer_.size() < 2) return true;
          return true;
        }
        if (end > kMaxPartHeaders)
          return Fail("A multipart part's headers are larger than " +
                      std::to_string(kMaxPartHeaders) + " bytes.");
        if (!ParseHeaders(std::string_view(buffer_).substr(0, end))) return false;
        erase(end == 0 ? 2 : end + 4);
        parts_.back().offset = buffer_at_ - 2;
        in_part_ = true;
        state_ = State::kContent;
        break;
      }
      case State::kDone:
        return true;
      case State::kFailed:
        return false;
    }
  }
}

bool MultipartReader::Finish() {
  if (state_ == State::kDone) return true;
  if (state_ != State::kFailed) Fail("The multipart body ends before its closing delimiter.");
  return false;
}

std::optional<int64_t> WavDurationMs(std::string_view head, uint64_t size) {
  if (head.size() < 12 || head.substr(0, 4) != "RIFF" || head.substr(8, 4) != "WAVE")
    return std::nullopt;
  uint32_t byte_rate = 0;
  size_t at = 12;
  while (at + 8 <= head.size()) {
    std::string_view id = head.substr(at, 4);
    const uint64_t chunk = Le32(head, at + 4);
    if (id == "fmt ") {
      if (at + 8 + 16 > head.size() || chunk < 16) return std::nullopt;
      byte_rate = Le32(head, at + 8 + 8);
    } else if (id == "data") {
      if (byte_rate == 0) return std::nullopt;
      const uint64_t start = at + 8;
      if (start > size) return std::nullopt;
      const uint64_t data = std::min<uint64_t>(chunk, size - start);
      return static_cast<int64_t>((data * 1000 + byte_rate - 1) / byte_rate);
    }
    at += 8 + chunk + (chunk & 1);
  }
  return std::nullopt;
}

}  // namespace tollgate::edge
