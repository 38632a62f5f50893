// Group commit of settlements: Settle calls queue their prepared batches here; one thread
// writes everything queued so far in one transaction (one WAL flush), then runs each caller's
// callback with the outcome. A Settle is acknowledged from its callback, so an acknowledged
// settlement is always committed.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tollgate/quota/repository.h"

namespace tollgate::quota {

class GroupCommitter final {
 public:
  // `fresh[i]`: batch[i] was settled for the first time. `error`: the commit failed (nothing of
  // the batch was written; the caller may retry).
  using Done = std::function<void(const std::vector<bool>& fresh, std::exception_ptr error)>;

  GroupCommitter(QuotaRepository& repo, size_t max_batch = 1000);
  ~GroupCommitter();  // commits what is queued, then stops
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  void Submit(std::vector<SettledRequest> batch, Done done);
  void Stop();

 private:
  struct Job {
    std::vector<SettledRequest> batch;
    Done done;
  };
  void Loop();

  QuotaRepository& repo_;
  const size_t max_batch_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Job> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace tollgate::quota
