// The one way to run a background loop (a refresher, a flusher, a sweeper): a std::jthread
// whose sleeps a stop cuts short, so an owner needs no mutex, condition variable or flag of its
// own to stop it. Declare it as the owner's last member: it is then destroyed (stopped and
// joined) before anything its loop uses.
//
//   BackgroundThread refresher_;
//   refresher_.Every(std::chrono::seconds(1), [this] { Reload(); });
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stop_token>
#include <thread>

namespace tollgate {

class BackgroundThread final {
 public:
  BackgroundThread() = default;
  ~BackgroundThread() { Stop(); }
  BackgroundThread(const BackgroundThread&) = delete;
  BackgroundThread& operator=(const BackgroundThread&) = delete;

  // Runs `body` on a new thread (stopping a running one first). `body` returns once its token
  // says stop; it waits with SleepFor(token, ...).
  void Start(std::function<void(std::stop_token)> body) {
    Stop();
    {
      std::lock_guard lock(mu_);
      woken_ = false;
    }
    thread_ = std::jthread(std::move(body));
  }

  // Calls `tick` every `interval` (the first time one interval after the start) until stopped.
  void Every(std::chrono::nanoseconds interval, std::function<void()> tick) {
    Start([this, interval, tick = std::move(tick)](std::stop_token stop) {
      while (SleepFor(stop, interval)) tick();
    });
  }

  // Asks the loop to stop, cuts its sleep short and waits for it to return. Not from the loop.
  void Stop() {
    if (!thread_.joinable()) return;
    thread_.request_stop();
    {
      // Between a sleeper's check of the token and its wait, the lock is held: it cannot miss
      // this notification.
      std::lock_guard lock(mu_);
    }
    cv_.notify_all();
    thread_.join();
  }

  // Cuts the loop's current (or next) sleep short without stopping it.
  void Wake() {
    {
      std::lock_guard lock(mu_);
      woken_ = true;
    }
    cv_.notify_all();
  }

  bool running() const { return thread_.joinable(); }

  // For the loop, with the token its body was given: sleeps for `d`, or until Wake() or Stop().
  // False once a stop was requested.
  bool SleepFor(const std::stop_token& stop, std::chrono::nanoseconds d) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, d, [&] { return woken_ || stop.stop_requested(); });
    woken_ = false;
    return !stop.stop_requested();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  std::jthread thread_;
};

}  // namespace tollgate
