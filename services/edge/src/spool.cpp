#include "src/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <boost/crc.hpp>

#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

constexpr size_t kHeader = 8;
constexpr uint32_t kMaxRecord = 16u << 20;

// CRC-32 (IEEE 802.3, as zlib and gzip compute it): the checksum of every spooled frame.
uint32_t Crc32(const std::string& data) {
  boost::crc_32_type crc;
  crc.process_bytes(data.data(), data.size());
  return crc.checksum();
}

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::string SegmentName(uint64_t seq) {
  char name[64];
  std::snprintf(name, sizeof name, "spool-%020llu.seg", static_cast<unsigned long long>(seq));
  return name;
}

bool ReadFile(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

// mkdir -p, mode 700: the records name users and client IPs.
void MakeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST)
      throw std::runtime_error("spool: cannot create " + part + ": " + std::strerror(errno));
  }
}

void SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

Spool::Spool(SpoolOptions options) : options_(std::move(options)) {
  if (options_.dir.empty()) throw std::runtime_error("spool: no directory");
  while (options_.dir.size() > 1 && options_.dir.back() == '/') options_.dir.pop_back();
  for (int attempt = 0;; ++attempt) {
    MakeDirs(options_.dir);
    std::string lock = options_.dir + "/LOCK";
    lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd_ < 0)
      throw std::runtime_error("spool: cannot open " + lock + ": " + std::strerror(errno));
    if (::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) break;
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (attempt > 0) throw std::runtime_error("spool: " + options_.dir + " is locked");
    std::string other = options_.dir + "-" + std::to_string(::getpid());
    log::Warn("edge",
              "spool directory in use by another process; using a directory of this process "
              "(give every edge its own edge.spool_dir)",
              {{"dir", options_.dir}, {"using", other}});
    options_.dir = other;
  }
  DIR* d = ::opendir(options_.dir.c_str());
  if (d == nullptr)
    throw std::runtime_error("spool: cannot read " + options_.dir + ": " + std::strerror(errno));
  std::vector<uint64_t> seqs;
  while (dirent* e = ::readdir(d)) {
    unsigned long long seq = 0;
    char tail[8] = {0};
    if (std::sscanf(e->d_name, "spool-%20llu.%4s", &seq, tail) == 2 &&
        std::strcmp(tail, "seg") == 0 && SegmentName(seq) == e->d_name)
      seqs.push_back(seq);
  }
  ::closedir(d);
  std::sort(seqs.begin(), seqs.end());
  for (uint64_t seq : seqs) {
    Segment s;
    s.seq = seq;
    s.path = options_.dir + "/" + SegmentName(seq);
    std::string data;
    if (!ReadFile(s.path, data)) continue;
    size_t pos = 0;
    while (data.size() - pos >= kHeader) {
      uint32_t len = GetU32(data.data() + pos);
      uint32_t crc = GetU32(data.data() + pos + 4);
      if (len > kMaxRecord || data.size() - pos - kHeader < len) break;
      std::string payload = data.substr(pos + kHeader, len);
      if (Crc32(payload) != crc) break;
      pending_.push_back({seq, std::move(payload)});
      ++s.unacked;
      pos += kHeader + len;
    }
    if (pos != data.size()) {
      log::Warn("edge", "spool: a segment ends with a torn or corrupt record; truncated",
                {{"segment", s.path}, {"kept_bytes", pos}, {"dropped_bytes", data.size() - pos}});
      if (::truncate(s.path.c_str(), static_cast<off_t>(pos)) != 0)
        log::Warn("edge", "spool: truncate failed", {{"segment", s.path}, {"errno", errno}});
    }
    s.size = pos;
    if (s.unacked == 0) {
      RemoveSegment(s);
      continue;
    }
    bytes_ += s.size;
    segments_.push_back(std::move(s));
  }
  if (!pending_.empty())
    log::Info("edge", "spool: replaying records from an earlier run",
              {{"dir", options_.dir}, {"records", pending_.size()}, {"bytes", bytes_}});
}

Spool::~Spool() {
  if (fd_ >= 0) ::close(fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void Spool::RemoveSegment(const Segment& s) {
  if (::unlink(s.path.c_str()) != 0 && errno != ENOENT)
    log::Warn("edge", "spool: cannot delete a delivered segment",
              {{"segment", s.path}, {"errno", errno}});
}

void Spool::OpenForAppend() {
  if (fd_ >= 0 && !segments_.empty() && segments_.back().size < options_.segment_bytes) return;
  if (fd_ >= 0) {
    // A full segment's written-only records become durable before it is let go (rare: once
    // per segment_bytes).
    if (unsynced_ && ::fdatasync(fd_) != 0)
      log::Error("edge", "spool: fsync failed",
                 {{"segment", segments_.back().path}, {"errno", errno}});
    unsynced_ = false;
    ::close(fd_);
    fd_ = -1;
  }
  Segment s;
  s.seq = segments_.empty() ? 1 : segments_.back().seq + 1;
  s.path = options_.dir + "/" + SegmentName(s.seq);
  fd_ = ::open(s.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (fd_ < 0) return;
  SyncDir(options_.dir);
  segments_.push_back(std::move(s));
}

Spool::AppendResult Spool::Append(const std::vector<std::string>& payloads, Durability durability) {
  AppendResult result;
  if (payloads.empty()) return result;
  std::lock_guard lock(mu_);
  OpenForAppend();
  if (fd_ < 0) {
    log::Error("edge", "spool: cannot open a segment for writing",
               {{"dir", options_.dir}, {"errno", errno}});
    result.rejected = payloads.size();
    return result;
  }
  size_t n = 0;
  uint64_t framed = 0;
  for (const auto& p : payloads) {
    if (p.size() > kMaxRecord || bytes_ + framed + kHeader + p.size() > options_.max_bytes) break;
    framed += kHeader + p.size();
    ++n;
  }
  full_ = n < payloads.size();
  if (n == 0) {
    result.rejected = payloads.size();
    return result;
  }
  std::string frame;
  frame.reserve(framed);
  for (size_t i = 0; i < n; ++i) {
    PutU32(frame, static_cast<uint32_t>(payloads[i].size()));
    PutU32(frame, Crc32(payloads[i]));
    frame += payloads[i];
  }
  iovec piece{frame.data(), frame.size()};
  if (!WriteLocked(&piece, 1, frame.size(), durability)) {
    result.rejected = payloads.size();
    return result;
  }
  Segment& seg = segments_.back();
  seg.size += frame.size();
  seg.unacked += n;
  bytes_ += frame.size();
  for (size_t i = 0; i < n; ++i) pending_.push_back({seg.seq, payloads[i]});
  result.appended = n;
  result.rejected = payloads.size() - n;
  return result;
}

Spool::AppendResult Spool::AppendOne(std::string payload, Durability durability) {
  AppendResult result;
  char header[kHeader];
  const uint32_t length = static_cast<uint32_t>(payload.size());
  const uint32_t crc = Crc32(payload);  // outside the lock
  for (int i = 0; i < 4; ++i) {
    header[i] = static_cast<char>((length >> (8 * i)) & 0xFF);
    header[4 + i] = static_cast<char>((crc >> (8 * i)) & 0xFF);
  }
  const uint64_t framed = kHeader + payload.size();
  std::lock_guard lock(mu_);
  OpenForAppend();
  if (fd_ < 0) {
    log::Error("edge", "spool: cannot open a segment for writing",
               {{"dir", options_.dir}, {"errno", errno}});
    result.rejected = 1;
    return result;
  }
  full_ = payload.size() > kMaxRecord || bytes_ + framed > options_.max_bytes;
  iovec pieces[2] = {{header, kHeader}, {payload.data(), payload.size()}};
  if (full_ || !WriteLocked(pieces, 2, framed, durability)) {
    result.rejected = 1;
    return result;
  }
  Segment& seg = segments_.back();
  seg.size += framed;
  seg.unacked += 1;
  bytes_ += framed;
  pending_.push_back({seg.seq, std::move(payload)});
  result.appended = 1;
  return result;
}

bool Spool::WriteLocked(iovec* pieces, int count, size_t total, Durability durability) {
  Segment& seg = segments_.back();
  size_t written = 0;
  while (written < total && count > 0) {
    ssize_t w = ::writev(fd_, pieces, count);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    written += static_cast<size_t>(w);
    // A short write: on from where it stopped.
    size_t left = static_cast<size_t>(w);
    while (count > 0 && left >= pieces->iov_len) {
      left -= pieces->iov_len;
      ++pieces;
      --count;
    }
    if (count > 0) {
      pieces->iov_base = static_cast<char*>(pieces->iov_base) + left;
      pieces->iov_len -= left;
    }
  }
  const bool sync = durability == Durability::kSynced;
  if (written != total || (sync && ::fdatasync(fd_) != 0)) {
    // Leave no half batch behind: cut the file back and start a new segment next time.
    log::Error("edge", "spool: write failed", {{"segment", seg.path}, {"errno", errno}});
    // If even that fails, the next replay stops at the torn record.
    (void)!::ftruncate(fd_, static_cast<off_t>(seg.size));
    if (unsynced_) (void)!::fdatasync(fd_);  // what was written before this batch
    unsynced_ = false;
    ::close(fd_);
    fd_ = -1;
    return false;
  }
  if (!sync) unsynced_ = true;
  return true;
}

bool Spool::Sync() {
  int fd = -1;
  {
    std::lock_guard lock(mu_);
    if (!unsynced_ || fd_ < 0) return true;
    // A duplicate of the descriptor: appends go on while this waits for the disk, and a
    // segment closed meanwhile (its own fsync above) does not take this one's file away.
    fd = ::dup(fd_);
    if (fd < 0) return false;
    unsynced_ = false;
  }
  const bool ok = ::fdatasync(fd) == 0;
  ::close(fd);
  if (!ok) {
    log::Error("edge", "spool: fsync failed", {{"dir", options_.dir}, {"errno", errno}});
    std::lock_guard lock(mu_);
    unsynced_ = true;
  }
  return ok;
}

std::vector<std::string> Spool::Front(size_t max, uint64_t max_bytes) const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  uint64_t total = 0;
  for (const auto& r : pending_) {
    if (out.size() >= max) break;
    if (!out.empty() && total + r.payload.size() > max_bytes) break;
    total += r.payload.size();
    out.push_back(r.payload);
  }
  return out;
}

void Spool::Ack(size_t n) {
  std::lock_guard lock(mu_);
  n = std::min(n, pending_.size());
  for (size_t i = 0; i < n; ++i) {
    uint64_t seq = pending_.front().seq;
    pending_.pop_front();
    for (auto& s : segments_)
      if (s.seq == seq) {
        --s.unacked;
        break;
      }
  }
  // Delete the fully delivered segments at the front; the one being appended to as well (the
  // next append starts a new one), so an idle spool holds no files.
  while (!segments_.empty() && segments_.front().unacked == 0) {
    const bool current = segments_.size() == 1;
    if (current && fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
    bytes_ -= segments_.front().size;
    RemoveSegment(segments_.front());
    segments_.pop_front();
    if (current) break;
  }
  if (bytes_ < options_.max_bytes) full_ = false;
}

size_t Spool::records() const {
  std::lock_guard lock(mu_);
  return pending_.size();
}

uint64_t Spool::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

bool Spool::full() const {
  std::lock_guard lock(mu_);
  return full_;
}

}  // namespace tollgate::edge
