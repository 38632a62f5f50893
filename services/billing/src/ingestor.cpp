#include "tollgate/billing/ingestor.h"

#include "tollgate/log.h"

namespace tollgate::billing {

Ingestor::Ingestor(Write write, size_t max_records)
    : write_(std::move(write)), max_records_(max_records == 0 ? 1 : max_records) {
  thread_ = std::thread([this] { Loop(); });
}

Ingestor::~Ingestor() { Stop(); }

void Ingestor::Submit(std::vector<UsageInput> records, Done done) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(records), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  done({});
}

void Ingestor::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

int64_t Ingestor::transactions() const {
  std::lock_guard lock(mu_);
  return transactions_;
}

void Ingestor::Loop() {
  for (;;) {
    std::vector<Pending> group;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      size_t records = 0;
      // Always at least one call, however large its batch.
      while (!queue_.empty() &&
             (group.empty() || records + queue_.front().records.size() <= max_records_)) {
        records += queue_.front().records.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    WriteGroup(group);
  }
}

void Ingestor::WriteGroup(std::vector<Pending>& group) {
  std::vector<UsageInput> all;
  for (const auto& p : group) all.insert(all.end(), p.records.begin(), p.records.end());
  try {
    std::vector<bool> stored = write_(std::move(all));
    {
      std::lock_guard lock(mu_);
      ++transactions_;
    }
    size_t at = 0;
    for (auto& p : group) {
      IngestReply reply{true, {}};
      reply.stored.assign(stored.begin() + at, stored.begin() + at + p.records.size());
      at += p.records.size();
      p.done(std::move(reply));
    }
    return;
  } catch (const std::exception& e) {
    if (group.size() == 1) {
      log::Warn("billing", "usage batch not stored",
                {{"records", group[0].records.size()}, {"error", log::Redact(e.what())}});
      group[0].done({false, {}, std::current_exception()});
      return;
    }
  }
  // One call's bad batch must not fail the others: write them one by one.
  for (auto& p : group) {
    std::vector<Pending> one;
    one.push_back(std::move(p));
    WriteGroup(one);
  }
}

}  // namespace tollgate::billing
