// The Files and Batches APIs of the mock, in memory (see mock_upstream.h): an upload's multipart
// body is scanned as it arrives (the file's bytes are counted, only its first kFileKeepBytes
// kept), so an upload of any size costs the mock no more memory than that.
#include <algorithm>
#include <ctime>

#include <nlohmann/json.hpp>

#include "mock_upstream.h"

namespace tollgate::mock {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxPartHeaderBytes = 16 * 1024;
constexpr size_t kMaxFieldBytes = 1024;  // a non-file field (purpose)

// A parameter of a header value: name="value" or name=value; "" when absent.
std::string HeaderParam(std::string_view value, std::string_view name) {
  for (size_t at = 0; (at = value.find(name, at)) != std::string_view::npos; at += name.size()) {
    const bool starts = at == 0 || value[at - 1] == ';' || value[at - 1] == ' ';
    if (!starts || at + name.size() >= value.size() || value[at + name.size()] != '=') continue;
    std::string_view rest = value.substr(at + name.size() + 1);
    if (!rest.empty() && rest.front() == '"') {
      rest.remove_prefix(1);
      return std::string(rest.substr(0, rest.find('"')));
    }
    return std::string(rest.substr(0, rest.find(';')));
  }
  return {};
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string MultipartBoundary(std::string_view content_type) {
  std::string lower = Lower(content_type.substr(0, content_type.find(';')));
  if (lower != "multipart/form-data") return {};
  return HeaderParam(content_type, "boundary");
}

MultipartScanner::MultipartScanner(std::string boundary)
    : delimiter_("\r\n--" + std::move(boundary)) {
  // The first delimiter has no CRLF before it: the scan starts as if one had just been seen.
  pending_ = "\r\n";
}

bool MultipartScanner::Fail(std::string why) {
  error_ = std::move(why);
  state_ = State::kError;
  return false;
}

void MultipartScanner::Data(std::string_view bytes) {
  if (bytes.empty()) return;
  if (part_is_file_) {
    file_bytes_ += bytes.size();
    if (file_head_.size() < kFileKeepBytes)
      file_head_.append(bytes.substr(0, kFileKeepBytes - file_head_.size()));
  } else if (part_name_ == "purpose" && purpose_.size() + bytes.size() <= kMaxFieldBytes) {
    purpose_.append(bytes);
  }
}

bool MultipartScanner::Feed(std::string_view bytes) {
  if (state_ == State::kError) return false;
  if (state_ == State::kDone) return true;  // the epilogue is ignored
  pending_.append(bytes);
  for (;;) {
    switch (state_) {
      case State::kPreamble:
      case State::kBody: {
        const size_t at = pending_.find(delimiter_);
        if (at == std::string::npos) {
          // Everything but a possible start of the delimiter is part data.
          const size_t keep = std::min(pending_.size(), delimiter_.size() - 1);
          if (state_ == State::kBody)
            Data(std::string_view(pending_).substr(0, pending_.size() - keep));
          pending_.erase(0, pending_.size() - keep);
          return true;
        }
        if (state_ == State::kBody) Data(std::string_view(pending_).substr(0, at));
        pending_.erase(0, at + delimiter_.size());
        state_ = State::kAfterDelimiter;
        break;
      }
      case State::kAfterDelimiter: {
        if (pending_.size() < 2) return true;
        if (pending_.compare(0, 2, "--") == 0) {
          state_ = State::kDone;
          pending_.clear();
          return true;
        }
        // Transport padding (spaces, tabs) may come before the CRLF.
        const size_t crlf = pending_.find("\r\n");
        if (crlf == std::string::npos) {
          if (pending_.size() > 256) return Fail("malformed multipart delimiter line");
          return true;
        }
        pending_.erase(0, crlf + 2);
        state_ = State::kHeaders;
        break;
      }
      case State::kHeaders: {
        const size_t end = pending_.find("\r\n\r\n");
        if (end == std::string::npos) {
          if (pending_.size() > kMaxPartHeaderBytes) return Fail("multipart part headers too long");
          return true;
        }
        part_name_.clear();
        part_is_file_ = false;
        std::string_view headers(pending_.data(), end + 2);
        for (size_t pos = 0; pos < headers.size();) {
          size_t eol = headers.find("\r\n", pos);
          std::string_view line = headers.substr(pos, eol - pos);
          pos = eol + 2;
          size_t colon = line.find(':');
          if (colon == std::string_view::npos) continue;
          if (Lower(line.substr(0, colon)) != "content-disposition") continue;
          std::string_view value = line.substr(colon + 1);
          part_name_ = HeaderParam(value, "name");
          if (value.find("filename") != std::string_view::npos) {
            part_is_file_ = part_name_ == "file";
            if (part_is_file_) filename_ = HeaderParam(value, "filename");
          }
        }
        if (part_is_file_) saw_file_ = true;
        // The part's data ends at the next delimiter (its leading CRLF included).
        pending_.erase(0, end + 4);
        state_ = State::kBody;
        break;
      }
      case State::kDone:
      case State::kError:
        return state_ == State::kDone;
    }
  }
}

Json FileJson(const StoredFile& file) {
  return {{"id", file.id},
          {"object", "file"},
          {"bytes", file.bytes},
          {"created_at", file.created_at},
          {"filename", file.filename},
          {"purpose", file.purpose},
          {"status", "processed"}};
}

bool ValidFilePurpose(std::string_view purpose) {
  static constexpr std::string_view kPurposes[] = {"assistants", "batch",     "fine-tune",
                                                   "vision",     "user_data", "evals"};
  return std::find(std::begin(kPurposes), std::end(kPurposes), purpose) != std::end(kPurposes);
}

std::string FileStore::Add(StoredFile file) {
  std::lock_guard lock(mu_);
  std::string id = "file-mock";
  gen::AppendHex(id, ++next_, 16);
  file.id = id;
  file.created_at = static_cast<int64_t>(std::time(nullptr));
  files_.emplace_back(std::move(file));
  return FileJson(files_.back()).dump();
}

std::optional<StoredFile> FileStore::Get(std::string_view id) const {
  std::lock_guard lock(mu_);
  for (const auto& file : files_)
    if (file.id == id) return file;
  return std::nullopt;
}

bool FileStore::Delete(std::string_view id) {
  std::lock_guard lock(mu_);
  auto it =
      std::find_if(files_.begin(), files_.end(), [&](const StoredFile& f) { return f.id == id; });
  if (it == files_.end()) return false;
  files_.erase(it);
  return true;
}

std::string FileStore::ListJson(std::string_view purpose, bool ascending, size_t limit) const {
  std::lock_guard lock(mu_);
  Json data = Json::array();
  std::vector<const StoredFile*> order;
  for (const auto& file : files_)
    if (purpose.empty() || file.purpose == purpose) order.push_back(&file);
  if (!ascending) std::reverse(order.begin(), order.end());  // newest first
  const bool more = order.size() > limit;
  if (more) order.resize(limit);
  for (const StoredFile* file : order) data.push_back(FileJson(*file));
  Json list = {{"object", "list"},
               {"data", data},
               {"first_id", order.empty() ? Json(nullptr) : Json(order.front()->id)},
               {"last_id", order.empty() ? Json(nullptr) : Json(order.back()->id)},
               {"has_more", more}};
  return list.dump();
}

std::optional<std::string> FileStore::CreateBatch(const Json& body, ApiError* error) {
  auto field = [&](const char* name) -> std::string {
    return body.is_object() && body.contains(name) && body[name].is_string()
               ? body[name].get<std::string>()
               : std::string();
  };
  const std::string input = field("input_file_id");
  const std::string endpoint = field("endpoint");
  const std::string window = field("completion_window");
  error->status = 400;
  if (input.empty()) {
    error->message = "Missing required parameter: 'input_file_id'.";
    error->param = "input_file_id";
    return std::nullopt;
  }
  if (endpoint != "/v1/chat/completions" && endpoint != "/v1/embeddings" &&
      endpoint != "/v1/completions" && endpoint != "/v1/responses") {
    error->message = "Invalid value for 'endpoint'.";
    error->param = "endpoint";
    return std::nullopt;
  }
  if (window != "24h") {
    error->message = "Invalid value for 'completion_window': only '24h' is supported.";
    error->param = "completion_window";
    return std::nullopt;
  }
  if (!Get(input)) {
    error->status = 404;
    error->message = "No such File object: " + input;
    error->param = "input_file_id";
    return std::nullopt;
  }
  std::lock_guard lock(mu_);
  std::string id = "batch_mock";
  gen::AppendHex(id, ++next_, 16);
  const auto now = static_cast<int64_t>(std::time(nullptr));
  Json batch = {{"id", id},
                {"object", "batch"},
                {"endpoint", endpoint},
                {"input_file_id", input},
                {"completion_window", window},
                {"status", "validating"},
                {"created_at", now},
                {"expires_at", now + 86400},
                {"request_counts", {{"total", 0}, {"completed", 0}, {"failed", 0}}},
                {"metadata", body.contains("metadata") ? body["metadata"] : Json(nullptr)}};
  std::string json = batch.dump();
  batches_.emplace_back(id, json);
  return json;
}

std::optional<std::string> FileStore::GetBatch(std::string_view id) const {
  std::lock_guard lock(mu_);
  for (const auto& [batch_id, json] : batches_)
    if (batch_id == id) return json;
  return std::nullopt;
}

}  // namespace tollgate::mock
