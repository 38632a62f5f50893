// Group commit for holds: Hold calls hand their hold here and are answered once the transaction
// that decided it has committed. One writer thread takes everything queued (up to max_holds) into
// one transaction (BillingRepository::PlaceHolds), so under load one user's concurrent requests
// share one row lock and one commit instead of queueing on the account row, and an idle service
// commits at once. The same shape as the Ingestor, for the request path.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tollgate/billing/repository.h"

namespace tollgate::billing {

class HoldBatcher final {
 public:
  using Write = std::function<std::vector<HoldOutcome>(const std::vector<NewHold>&)>;
  // Runs once, on the writer thread (inline after Stop): the outcome, or the error that failed it.
  using Done = std::function<void(std::exception_ptr, HoldOutcome)>;

  HoldBatcher(Write write, size_t max_holds);
  ~HoldBatcher();  // Stop()
  HoldBatcher(const HoldBatcher&) = delete;
  HoldBatcher& operator=(const HoldBatcher&) = delete;

  void Submit(NewHold hold, Done done);
  // Decides what is queued, then joins the writer.
  void Stop();

  int64_t transactions() const;

 private:
  struct Pending {
    NewHold hold;
    Done done;
  };
  void Loop();
  void WriteGroup(std::vector<Pending>& group);

  Write write_;
  size_t max_holds_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  bool stopping_ = false;
  int64_t transactions_ = 0;
  std::thread thread_;
};

}  // namespace tollgate::billing
