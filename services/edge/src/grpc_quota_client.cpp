#include "src/grpc_quota_client.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "src/grpc_call.h"
#include "tollgate/log.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::quota::v1;

RateLimitWindow FromProto(const pb::RateLimitWindow& w) {
  return {w.limit(), w.remaining(), w.reset_ms()};
}

// The tighter of two windows: fewer units left (an unlimited one never wins).
void Tighten(RateLimitWindow& into, const RateLimitWindow& w) {
  if (w.limit == 0) return;
  if (into.limit == 0 || w.remaining < into.remaining) into = w;
}

// "0:r1f..,1:r2e.." <-> [(0, "r1f.."), (1, "r2e..")]
std::vector<std::pair<size_t, std::string>> ParseReservation(const std::string& text,
                                                             size_t replicas) {
  std::vector<std::pair<size_t, std::string>> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view part(text.data() + pos, end - pos);
    size_t colon = part.find(':');
    if (colon != std::string_view::npos && colon > 0) {
      size_t index = 0;
      bool ok = true;
      for (char c : part.substr(0, colon)) {
        if (c < '0' || c > '9') ok = false;
        index = index * 10 + static_cast<size_t>(c - '0');
      }
      if (ok && index < replicas) out.emplace_back(index, std::string(part.substr(colon + 1)));
    }
    pos = end + 1;
  }
  return out;
}

}  // namespace

size_t QuotaOwner(std::string_view kind, std::string_view subject, size_t replicas) {
  if (replicas <= 1) return 0;
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](char c) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  };
  for (char c : kind) mix(c);
  mix(':');
  for (char c : subject) mix(c);
  return static_cast<size_t>(h % replicas);
}

struct GrpcQuotaClient::Impl {
  struct Replica {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::QuotaService::Stub> stub;
    std::deque<pb::Settlement> queue;
    bool batch_in_flight = false;
    // After a failed batch the replica is left alone for a second (no retry storm, no log flood).
    std::chrono::steady_clock::time_point next_try;
  };

  explicit Impl(GrpcQuotaClientOptions opts) : options(std::move(opts)) {
    if (options.targets.empty()) throw std::invalid_argument("edge.quota_targets is empty");
    for (const auto& t : options.targets) {
      auto r = std::make_unique<Replica>();
      r->target = t;
      r->channel = OpenChannel(t);
      r->stub = pb::QuotaService::NewStub(r->channel);
      replicas.push_back(std::move(r));
    }
    if (options.registry) {
      auto& unavailable_family =
          prometheus::BuildCounter()
              .Name("tollgate_edge_quota_unavailable_total")
              .Help("Admissions that met an unreachable quota replica, by what the edge did")
              .Register(*options.registry);
      unavailable_counter =
          &unavailable_family.Add({{"mode", options.fail_open ? "fail_open" : "fail_closed"}});
      auto& settle_family = prometheus::BuildCounter()
                                .Name("tollgate_edge_quota_settlements_total")
                                .Help("Settlements sent to the quota service, by result")
                                .Register(*options.registry);
      sent_counter = &settle_family.Add({{"result", "acknowledged"}});
      dropped_counter = &settle_family.Add({{"result", "dropped"}});
    }
    flusher = std::thread([this] { FlushLoop(); });
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    if (!calls.Stop()) return;  // Admit and Release are refused from here on
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
    if (flusher.joinable()) flusher.join();
    calls.Drain();
  }

  void CountDropped(size_t n) {
    dropped.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
    if (dropped_counter) dropped_counter->Increment(static_cast<double>(n));
  }

  void ReleasePart(size_t replica, const std::string& reservation_id) {
    pb::ReleaseRequest request;
    request.set_reservation_id(reservation_id);
    // Not sent once shut down (or if it fails): the reservation then expires on its own.
    CallUnary<pb::ReleaseResponse>(
        calls, options.timeout, std::move(request),
        [stub = replicas[replica]->stub.get()](auto... a) { stub->async()->Release(a...); },
        [](const grpc::Status& status, pb::ReleaseResponse&) {
          if (!status.ok())
            log::Debug("edge", "quota Release failed",
                       {{"grpc_code", static_cast<int>(status.error_code())}});
        });
  }

  // One batch per replica in flight at a time; a failed batch goes back to the front of its
  // queue (the quota service is idempotent on request_id), except on the way out.
  void FlushLoop() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait_for(lock, options.flush_interval);
      for (size_t i = 0; i < replicas.size(); ++i) {
        Replica& r = *replicas[i];
        if (r.queue.empty() || r.batch_in_flight) continue;
        if (!stopping && std::chrono::steady_clock::now() < r.next_try) continue;
        pb::SettleRequest request;
        size_t n = std::min(r.queue.size(), options.batch_size);
        for (size_t k = 0; k < n; ++k) {
          *request.add_settlements() = std::move(r.queue.front());
          r.queue.pop_front();
        }
        r.batch_in_flight = true;
        // Started under `mu`: a delivery is never refused, so its callback never runs inline.
        CallUnary<pb::SettleResponse>(
            calls, options.timeout, std::move(request),
            [stub = r.stub.get()](auto... a) { stub->async()->Settle(a...); },
            [this, i, n](const grpc::Status& status, pb::SettleResponse&,
                         pb::SettleRequest& sent_request) {
              std::lock_guard guard(mu);
              Replica& rep = *replicas[i];
              if (status.ok()) {
                sent.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
                if (sent_counter) sent_counter->Increment(static_cast<double>(n));
              } else if (stopping) {
                CountDropped(n);
                log::Warn("edge", "quota Settle failed while stopping; settlements dropped",
                          {{"replica", rep.target},
                           {"settlements", n},
                           {"grpc_code", static_cast<int>(status.error_code())}});
              } else {
                log::Warn("edge", "quota Settle failed; will retry",
                          {{"replica", rep.target},
                           {"settlements", n},
                           {"grpc_code", static_cast<int>(status.error_code())}});
                rep.next_try = std::chrono::steady_clock::now() + std::chrono::seconds(1);
                auto& items = *sent_request.mutable_settlements();
                for (int k = items.size() - 1; k >= 0; --k)
                  rep.queue.push_front(std::move(items[k]));
                while (rep.queue.size() > options.max_queued) {
                  rep.queue.pop_back();
                  CountDropped(1);
                }
              }
              rep.batch_in_flight = false;
              cv.notify_all();
            },
            CallTracker::Kind::kDelivery);
      }
      if (stopping) {
        bool idle = true;
        for (const auto& r : replicas) idle = idle && r->queue.empty() && !r->batch_in_flight;
        if (idle) return;
      }
    }
  }

  GrpcQuotaClientOptions options;
  std::vector<std::unique_ptr<Replica>> replicas;
  CallTracker calls;
  std::mutex mu;  // the settlement queues and the flusher's state
  std::condition_variable cv;
  bool stopping = false;
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> dropped{0};
  std::atomic<int64_t> unavailable{0};
  prometheus::Counter* unavailable_counter = nullptr;
  prometheus::Counter* sent_counter = nullptr;
  prometheus::Counter* dropped_counter = nullptr;
  std::thread flusher;
};

GrpcQuotaClient::GrpcQuotaClient(GrpcQuotaClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

GrpcQuotaClient::~GrpcQuotaClient() { Shutdown(); }

void GrpcQuotaClient::Shutdown() { impl_->Shutdown(); }

void GrpcQuotaClient::Admit(AdmitRequest request, std::function<void(AdmitResult)> done) {
  struct Part {
    size_t replica = 0;
    pb::AdmitRequest request;
    pb::AdmitResponse response;
    grpc::Status status;
  };
  struct Fanout {
    std::vector<Part> parts;
    std::atomic<size_t> pending{0};
    std::function<void(AdmitResult)> done;
  };
  Impl* impl = impl_.get();
  const size_t n = impl->replicas.size();
  auto fanout = std::make_shared<Fanout>();
  fanout->done = std::move(done);
  auto part_for = [&](size_t replica) -> pb::AdmitRequest& {
    for (auto& p : fanout->parts)
      if (p.replica == replica) return p.request;
    Part& p = fanout->parts.emplace_back();
    p.replica = replica;
    p.request.set_request_id(request.request_id);
    p.request.set_model(request.model);
    p.request.set_estimated_tokens(request.estimated_tokens);
    return p.request;
  };
  if (!request.principal.api_key_id.empty())
    part_for(QuotaOwner("key", request.principal.api_key_id, n))
        .set_api_key_id(request.principal.api_key_id);
  if (!request.principal.user_id.empty())
    part_for(QuotaOwner("user", request.principal.user_id, n))
        .set_user_id(request.principal.user_id);
  if (!request.client_ip.empty())
    part_for(QuotaOwner("ip", request.client_ip, n)).set_client_ip(request.client_ip);
  if (fanout->parts.empty()) {
    fanout->done(AdmitResult{});  // nobody to limit
    return;
  }
  // Runs once, after the last part's answer: every part has its status and response.
  auto complete = [impl](Fanout& fanout) {
    AdmitResult result;
    const Part* denied = nullptr;
    bool failed = false;
    std::vector<const Part*> granted;
    for (const auto& p : fanout.parts) {
      if (!p.status.ok()) {
        // Unreachable, or an error quota answered: either way no decision, so the outage policy.
        failed = true;
        continue;
      }
      Tighten(result.requests, FromProto(p.response.requests()));
      Tighten(result.tokens, FromProto(p.response.tokens()));
      if (p.response.allowed()) {
        granted.push_back(&p);
      } else if (!denied || (p.response.error_code() == "insufficient_quota" &&
                             denied->response.error_code() != "insufficient_quota")) {
        denied = &p;  // an exhausted quota outranks a full window: retrying will not help
      }
    }
    bool release_granted = false;
    if (denied) {
      release_granted = true;
      int64_t retry = 0;
      for (const auto& p : fanout.parts)
        if (p.status.ok() && !p.response.allowed())
          retry = std::max(retry, p.response.retry_after_ms());
      const bool quota = denied->response.error_code() == "insufficient_quota";
      result.failure = Failure{quota ? ErrorCode::kInsufficientQuota : ErrorCode::kRateLimited,
                               denied->response.message(), retry};
    } else if (failed) {
      impl->unavailable.fetch_add(1, std::memory_order_relaxed);
      if (impl->unavailable_counter) impl->unavailable_counter->Increment();
      static log::Throttle throttle;
      int64_t skipped = 0;
      if (throttle.Allow(&skipped))
        for (const auto& p : fanout.parts)
          if (!p.status.ok())
            log::Warn("edge",
                      impl->options.fail_open ? "quota replica unreachable; admitting (fail open)"
                                              : "quota replica unreachable; refusing (fail closed)",
                      {{"replica", impl->replicas[p.replica]->target},
                       {"grpc_code", static_cast<int>(p.status.error_code())},
                       {"suppressed", skipped}});
      if (!impl->options.fail_open) {
        release_granted = true;
        result.failure =
            Failure{ErrorCode::kServiceUnavailable,
                    "The rate limiting service is unavailable, so the request was not admitted. "
                    "Please retry shortly."};
      }
    }
    if (release_granted) {
      for (const Part* p : granted) impl->ReleasePart(p->replica, p->response.reservation_id());
    } else {
      for (const Part* p : granted) {
        if (!result.reservation_id.empty()) result.reservation_id += ',';
        result.reservation_id += std::to_string(p->replica) + ":" + p->response.reservation_id();
      }
    }
    fanout.done(std::move(result));
  };
  // Answers may arrive (or, once shut down, be given inline) while parts are still being sent:
  // nothing below touches `parts` but through its own index.
  fanout->pending = fanout->parts.size();
  for (size_t i = 0; i < fanout->parts.size(); ++i) {
    CallUnary<pb::AdmitResponse>(
        impl->calls, impl->options.timeout, std::move(fanout->parts[i].request),
        [stub = impl->replicas[fanout->parts[i].replica]->stub.get()](auto... a) {
          stub->async()->Admit(a...);
        },
        [fanout, i, complete](const grpc::Status& status, pb::AdmitResponse& response) {
          fanout->parts[i].status = status;
          fanout->parts[i].response = std::move(response);
          if (fanout->pending.fetch_sub(1) == 1) complete(*fanout);
        });
  }
}

void GrpcQuotaClient::Release(std::string reservation_id) {
  for (auto& [replica, id] : ParseReservation(reservation_id, impl_->replicas.size()))
    impl_->ReleasePart(replica, id);
}

void GrpcQuotaClient::Settle(const UsageRecord& record) {
  if (record.reservation_id.empty() || record.request_id.empty()) return;
  const size_t n = impl_->replicas.size();
  bool wake = false;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& [replica, id] : ParseReservation(record.reservation_id, n)) {
      pb::Settlement s;
      s.set_request_id(record.request_id);
      s.set_reservation_id(id);
      s.set_actual_tokens(std::max<int64_t>(0, record.prompt_tokens + record.completion_tokens));
      // The subjects this replica owns: charged even if the reservation expired meanwhile.
      if (!record.principal.api_key_id.empty() &&
          QuotaOwner("key", record.principal.api_key_id, n) == replica)
        s.set_api_key_id(record.principal.api_key_id);
      if (!record.principal.user_id.empty() &&
          QuotaOwner("user", record.principal.user_id, n) == replica)
        s.set_user_id(record.principal.user_id);
      auto& q = impl_->replicas[replica]->queue;
      q.push_back(std::move(s));
      if (q.size() > impl_->options.max_queued) {
        q.pop_front();
        impl_->CountDropped(1);
      }
      wake = wake || q.size() >= impl_->options.batch_size;
    }
  }
  if (wake) impl_->cv.notify_all();
}

int64_t GrpcQuotaClient::settlements_sent() const {
  return impl_->sent.load(std::memory_order_relaxed);
}
int64_t GrpcQuotaClient::settlements_dropped() const {
  return impl_->dropped.load(std::memory_order_relaxed);
}
int64_t GrpcQuotaClient::unavailable() const {
  return impl_->unavailable.load(std::memory_order_relaxed);
}

}  // namespace tollgate::edge
