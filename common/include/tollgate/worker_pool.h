// A fixed set of threads for blocking work (libpqxx), with a bounded queue. gRPC callback
// reactors post here and finish from the worker, so no gRPC thread ever blocks on SQL; when
// `max_queued` tasks already wait, TryPost refuses (see worker_call.h for how a call is then
// answered) instead of letting the queue, and every caller's latency, grow without bound.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

namespace boost::asio {
class thread_pool;
}  // namespace boost::asio

namespace prometheus {
class Counter;
class Registry;
}  // namespace prometheus

namespace tollgate {

class WorkerPool final {
 public:
  // `registry` (optional) gets tollgate_worker_pool_refused_total{service=`service`}.
  WorkerPool(int threads, size_t max_queued, prometheus::Registry* registry = nullptr,
             const std::string& service = "");
  ~WorkerPool();  // runs what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`, or returns false (and drops it) when `max_queued` tasks already wait for a
  // thread or the pool is stopped.
  [[nodiscard]] bool TryPost(std::function<void()> task);
  // Runs what is queued, then joins; later posts are refused.
  void Stop();

  size_t queued() const { return queued_.load(std::memory_order_relaxed); }
  size_t max_queued() const { return max_queued_; }

 private:
  const size_t max_queued_;
  std::mutex mu_;  // orders posts against Stop()
  bool stopped_ = false;
  std::atomic<size_t> queued_{0};  // posted, not yet started
  prometheus::Counter* refused_ = nullptr;
  std::unique_ptr<boost::asio::thread_pool> pool_;
};

}  // namespace tollgate
