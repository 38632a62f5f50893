// Group commit for usage records: RecordUsage calls hand their batches here and
// are answered once the transaction that stored them has committed. One writer
// thread takes everything queued (up to max_records) into one transaction, so
// under load many calls share one commit, and an idle service commits at once.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tollgate/billing/repository.h"

namespace tollgate::billing {

struct IngestReply {
  bool ok = false;
  std::vector<bool> stored;  // per record, when ok
  std::exception_ptr error;  // why not, when not ok
};

class Ingestor final {
 public:
  // `write` stores one transaction's worth of records (Billing::Record).
  using Write = std::function<std::vector<bool>(std::vector<UsageInput>)>;
  using Done = std::function<void(IngestReply)>;

  Ingestor(Write write, size_t max_records);
  ~Ingestor();  // Stop()
  Ingestor(const Ingestor&) = delete;
  Ingestor& operator=(const Ingestor&) = delete;

  // `done` runs once, on the writer thread (or inline after Stop: not ok).
  void Submit(std::vector<UsageInput> records, Done done);
  // Writes what is queued, then joins the writer.
  void Stop();

  int64_t transactions() const;

 private:
  struct Pending {
    std::vector<UsageInput> records;
    Done done;
  };
  void Loop();
  void WriteGroup(std::vector<Pending>& group);

  Write write_;
  size_t max_records_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  int64_t transactions_ = 0;
  std::thread thread_;
};

}  // namespace tollgate::billing
