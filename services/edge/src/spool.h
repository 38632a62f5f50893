// A bounded, append-only on-disk queue of opaque records (the edge's usage records on their way
// to billing). Records are appended in batches (one write and one fsync per batch) to segment
// files `spool-<20-digit sequence>.seg` in one directory; each record is framed as
// [u32 length][u32 crc32 of the payload][payload], little-endian. Records leave the spool only in
// order, from the front, once their delivery was acknowledged (Ack); a segment whose records are
// all acknowledged is deleted. Opening a spool replays what its directory holds (a record cut
// off by a crash, or one whose checksum does not match, ends its segment: the file is truncated
// there). Acknowledged records of a segment still on disk are delivered again after a restart:
// the consumer must be idempotent (billing is, on request_id).
//
// Thread-safe. A record can be appended durable at once (written and fsynced: Append's default)
// or written only (kWritten: one write() into the page cache, which survives the process being
// killed; the next Sync makes it survive the machine). The edge appends each usage record
// written-only as its answer ends, on the request's thread, and syncs in the background, so a
// SIGKILL loses no finished answer's record. Everything else may wait on the disk.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

struct iovec;

namespace tollgate::edge {

struct SpoolOptions {
  std::string dir;
  uint64_t max_bytes = 256ull << 20;    // framed records on disk, at most
  uint64_t segment_bytes = 8ull << 20;  // a new segment starts beyond this size
};

class Spool final {
 public:
  // Creates `dir` if needed (mode 700), locks it (flock on `dir`/LOCK) and replays it. Another
  // process holding the lock means two edges were given one directory: this one then spools
  // into `dir`-<pid> instead, with a warning (that directory is replayed only by an edge
  // configured with it). Throws std::runtime_error when no directory can be created or read.
  explicit Spool(SpoolOptions options);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  struct AppendResult {
    size_t appended = 0;  // the first `appended` payloads are written (and fsynced if kSynced)
    size_t rejected = 0;  // the rest: the spool is full (max_bytes) or the disk failed
  };
  enum class Durability {
    kSynced,   // written and fsynced before Append returns
    kWritten,  // written (the page cache: survives the process, not the machine) until Sync
  };
  // Appends in order as many payloads as fit, as one write (and one fsync when kSynced).
  AppendResult Append(const std::vector<std::string>& payloads,
                      Durability durability = Durability::kSynced);
  // One payload, as Append does, but taken over (not copied into the queue) and written with
  // its frame header in one writev: no buffer is built. The edge's per-request appends.
  AppendResult AppendOne(std::string payload, Durability durability = Durability::kSynced);
  // Makes every record written so far durable (fsync, without holding up appends meanwhile).
  // False when the disk failed.
  bool Sync();

  // The oldest records not acknowledged yet: up to `max` of them (fewer bytes than `max_bytes`,
  // but at least one).
  std::vector<std::string> Front(size_t max, uint64_t max_bytes = UINT64_MAX) const;
  // Drops the `n` oldest records (delivered and acknowledged).
  void Ack(size_t n);

  size_t records() const;  // not acknowledged
  uint64_t bytes() const;  // on disk, acknowledged records of live segments included
  bool full() const;       // the last Append rejected something for want of room
  const std::string& dir() const { return options_.dir; }

 private:
  struct Segment {
    uint64_t seq = 0;
    std::string path;
    uint64_t size = 0;   // bytes in the file
    size_t unacked = 0;  // records still pending
  };
  struct Record {
    uint64_t seq;  // the segment it is in
    std::string payload;
  };
  void OpenForAppend();  // mu_ held
  // Writes `count` pieces (`total` bytes of whole frames) at the end of the open segment, and
  // fsyncs when kSynced. On failure the segment is cut back to where it was and closed: false.
  // mu_ held, fd_ open.
  bool WriteLocked(iovec* pieces, int count, size_t total, Durability durability);
  void RemoveSegment(const Segment& s);

  SpoolOptions options_;
  int lock_fd_ = -1;
  mutable std::mutex mu_;
  std::deque<Segment> segments_;  // oldest first; the last one is the one appended to
  std::deque<Record> pending_;
  uint64_t bytes_ = 0;
  int fd_ = -1;  // of segments_.back(), when open for appending
  bool full_ = false;
  bool unsynced_ = false;  // records written to fd_ since its last fsync
};

}  // namespace tollgate::edge
