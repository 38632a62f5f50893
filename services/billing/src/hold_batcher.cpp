#include "tollgate/billing/hold_batcher.h"

#include <stdexcept>

namespace tollgate::billing {

HoldBatcher::HoldBatcher(Write write, size_t max_holds)
    : write_(std::move(write)), max_holds_(max_holds == 0 ? 1 : max_holds) {
  thread_ = std::thread([this] { Loop(); });
}

HoldBatcher::~HoldBatcher() { Stop(); }

void HoldBatcher::Submit(NewHold hold, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(hold), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  done(std::make_exception_ptr(std::runtime_error("billing is shutting down")), {});
}

void HoldBatcher::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

int64_t HoldBatcher::transactions() const {
  std::lock_guard lock(mu_);
  return transactions_;
}

void HoldBatcher::Loop() {
  for (;;) {
    std::vector<Pending> group;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      while (!queue_.empty() && group.size() < max_holds_) {
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    WriteGroup(group);
  }
}

void HoldBatcher::WriteGroup(std::vector<Pending>& group) {
  std::vector<NewHold> holds;
  holds.reserve(group.size());
  for (const auto& p : group) holds.push_back(p.hold);
  try {
    std::vector<HoldOutcome> outcomes = write_(holds);
    {
      std::lock_guard lock(mu_);
      ++transactions_;
    }
    for (size_t i = 0; i < group.size(); ++i) group[i].done(nullptr, outcomes.at(i));
    return;
  } catch (...) {
    if (group.size() == 1) {
      group[0].done(std::current_exception(), {});
      return;
    }
  }
  // Whatever failed the group fails only the holds it concerns: decide them one by one.
  for (auto& p : group) {
    std::vector<Pending> one;
    one.push_back(std::move(p));
    WriteGroup(one);
  }
}

}  // namespace tollgate::billing
