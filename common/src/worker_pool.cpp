#include "tollgate/worker_pool.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

namespace tollgate {

WorkerPool::WorkerPool(int threads, size_t max_queued, prometheus::Registry* registry,
                       const std::string& service)
    : max_queued_(max_queued),
      pool_(std::make_unique<boost::asio::thread_pool>(static_cast<size_t>(threads))) {
  if (registry == nullptr) return;
  refused_ = &prometheus::BuildCounter()
                  .Name("tollgate_worker_pool_refused_total")
                  .Help(
                      "Calls refused (answered UNAVAILABLE): the worker queue was full, or the "
                      "service stopping")
                  .Register(*registry)
                  .Add({{"service", service}});
}

WorkerPool::~WorkerPool() { Stop(); }

bool WorkerPool::TryPost(std::function<void()> task) {
  {
    // Under the lock, so a post either lands before Stop() (and runs) or is refused.
    std::lock_guard lock(mu_);
    if (!stopped_ && queued_.load(std::memory_order_relaxed) < max_queued_) {
      queued_.fetch_add(1, std::memory_order_relaxed);
      boost::asio::post(*pool_, [this, task = std::move(task)] {
        queued_.fetch_sub(1, std::memory_order_relaxed);
        task();
      });
      return true;
    }
  }
  if (refused_) refused_->Increment();
  return false;
}

void WorkerPool::Stop() {
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  // Without stop(), join() waits until everything posted has run.
  pool_->join();
}

}  // namespace tollgate
