#include "tollgate/quota/group_commit.h"

namespace tollgate::quota {

GroupCommitter::GroupCommitter(QuotaRepository& repo, size_t max_batch)
    : repo_(repo), max_batch_(max_batch), thread_([this] { Loop(); }) {}

GroupCommitter::~GroupCommitter() { Stop(); }

void GroupCommitter::Submit(std::vector<SettledRequest> batch, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(batch), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  done({}, std::make_exception_ptr(std::runtime_error("the quota service is stopping")));
}

void GroupCommitter::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void GroupCommitter::Loop() {
  for (;;) {
    std::vector<Job> jobs;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      // Whole jobs up to max_batch settlements (at least one job).
      size_t n = 0, taken = 0;
      while (taken < queue_.size() && (taken == 0 || n + queue_[taken].batch.size() <= max_batch_))
        n += queue_[taken++].batch.size();
      jobs.assign(std::make_move_iterator(queue_.begin()),
                  std::make_move_iterator(queue_.begin() + static_cast<long>(taken)));
      queue_.erase(queue_.begin(), queue_.begin() + static_cast<long>(taken));
    }
    std::vector<SettledRequest> all;
    for (auto& j : jobs)
      for (auto& s : j.batch) all.push_back(s);
    std::vector<bool> fresh(all.size(), false);
    std::exception_ptr error;
    try {
      for (size_t i : repo_.CommitSettlements(all)) fresh[i] = true;
    } catch (...) {
      error = std::current_exception();
    }
    size_t offset = 0;
    for (auto& j : jobs) {
      std::vector<bool> mine(fresh.begin() + static_cast<long>(offset),
                             fresh.begin() + static_cast<long>(offset + j.batch.size()));
      offset += j.batch.size();
      j.done(mine, error);
    }
  }
}

}  // namespace tollgate::quota
