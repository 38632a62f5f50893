#include "src/grpc_billing_client.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "src/grpc_call.h"
#include "src/spool.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::billing::v1;

// auth's int64 ids travel as decimal strings in the Principal; 0: not a billable id.
int64_t ParseId(const std::string& text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return ec == std::errc() && end == text.data() + text.size() && v > 0 ? v : 0;
}

constexpr const char* kUnavailable =
    "The billing service is unavailable, so the request was not admitted. Please retry shortly.";

}  // namespace

struct GrpcBillingClient::Impl {
  explicit Impl(GrpcBillingClientOptions opts)
      : options(std::move(opts)), spool(SpoolOptions{options.spool_dir, options.spool_max_bytes}) {
    channel = OpenChannel(options.target);
    stub = pb::BillingService::NewStub(channel);
    if (options.registry) {
      auto& records_family = prometheus::BuildCounter()
                                 .Name("tollgate_edge_billing_records_total")
                                 .Help("Usage records on their way to billing, by step")
                                 .Register(*options.registry);
      spooled_counter = &records_family.Add({{"result", "spooled"}});
      delivered_counter = &records_family.Add({{"result", "delivered"}});
      dropped_counter = &records_family.Add({{"result", "dropped"}});
      auto& spool_family = prometheus::BuildGauge()
                               .Name("tollgate_edge_billing_spool")
                               .Help(
                                   "The edge's usage record spool: records and bytes on disk, "
                                   "and its bound in bytes")
                               .Register(*options.registry);
      spool_records_gauge = &spool_family.Add({{"what", "records"}});
      spool_bytes_gauge = &spool_family.Add({{"what", "bytes"}});
      spool_family.Add({{"what", "max_bytes"}}).Set(static_cast<double>(options.spool_max_bytes));
      auto& holds_family = prometheus::BuildCounter()
                               .Name("tollgate_edge_billing_holds_total")
                               .Help("Billing holds asked for by the edge, by result")
                               .Register(*options.registry);
      holds_granted = &holds_family.Add({{"result", "granted"}});
      holds_refused = &holds_family.Add({{"result", "insufficient_quota"}});
      holds_unavailable = &holds_family.Add({{"result", "unavailable"}});
      UpdateGauges();
    }
    sender = std::thread([this] { SendLoop(); });
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    {
      // What is queued gets one bounded chance to reach billing, so a clean stop normally
      // leaves an empty spool; whatever is left is delivered by the next start.
      std::unique_lock lock(mu);
      if (stopping) return;
      wake_sender = true;
      cv.notify_all();
      cv.wait_for(lock, options.timeout, [&] {
        return failing || (incoming.empty() && !batch_in_flight && spool.records() == 0);
      });
      stopping = true;
      calls.Stop();  // new calls are answered as unreachable from here on
    }
    cv.notify_all();
    if (sender.joinable()) sender.join();
    calls.Drain();
  }

  void UpdateGauges() {
    if (spool_records_gauge) spool_records_gauge->Set(static_cast<double>(spool.records()));
    if (spool_bytes_gauge) spool_bytes_gauge->Set(static_cast<double>(spool.bytes()));
  }

  void CountDropped(size_t n) {
    if (n == 0) return;
    if (dropped_counter) dropped_counter->Increment(static_cast<double>(n));
  }

  // Moves the records queued in memory into the spool (one write, one fsync). Sender thread.
  void SpoolQueued() {
    std::vector<std::string> batch;
    {
      std::lock_guard lock(mu);
      batch.assign(std::make_move_iterator(incoming.begin()),
                   std::make_move_iterator(incoming.end()));
      incoming.clear();
    }
    if (batch.empty()) return;
    auto r = spool.Append(batch);
    if (spooled_counter) spooled_counter->Increment(static_cast<double>(r.appended));
    CountDropped(r.rejected);
    if (r.rejected > 0 && !full_logged) {
      full_logged = true;
      log::Error("edge",
                 "billing spool full (or its disk failing): usage records are being dropped "
                 "until billing catches up",
                 {{"dir", spool.dir()},
                  {"spool_bytes", spool.bytes()},
                  {"spool_max_bytes", options.spool_max_bytes},
                  {"dropped", r.rejected}});
    } else if (r.rejected == 0 && full_logged) {
      full_logged = false;
      log::Info("edge", "billing spool accepts records again", {{"dir", spool.dir()}});
    }
    UpdateGauges();
  }

  // One RecordUsage in flight at a time, always the oldest spooled records.
  void SendLoop() {
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait_for(lock, options.flush_interval, [&] {
          return stopping || incoming.size() >= options.batch_size ||
                 (wake_sender && !batch_in_flight);
        });
        wake_sender = false;
      }
      SpoolQueued();
      std::unique_lock lock(mu);
      if (stopping) {
        lock.unlock();
        SpoolQueued();  // a Record that raced with the stop
        return;
      }
      if (batch_in_flight || std::chrono::steady_clock::now() < next_try) continue;
      lock.unlock();
      auto payloads = spool.Front(options.batch_size, 4u << 20);
      if (payloads.empty()) continue;
      pb::RecordUsageRequest request;
      for (const auto& p : payloads) {
        if (!request.add_records()->ParseFromString(p)) {
          // Cannot happen with a checksummed spool we wrote ourselves; never block on it.
          request.mutable_records()->RemoveLast();
        }
      }
      const size_t n = payloads.size();
      lock.lock();
      batch_in_flight = true;
      lock.unlock();
      CallUnary<pb::RecordUsageResponse>(
          calls, options.deliver_timeout, std::move(request),
          [this](auto... a) { stub->async()->RecordUsage(a...); },
          [this, n](const grpc::Status& status, pb::RecordUsageResponse&) {
            if (status.ok()) {
              // Counted before the spool drops them, so a reader that sees an empty spool
              // also sees every delivered record counted.
              delivered.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
              if (delivered_counter) delivered_counter->Increment(static_cast<double>(n));
              spool.Ack(n);
              if (failing.exchange(false))
                log::Info("edge", "billing RecordUsage delivers again",
                          {{"spooled", spool.records()}});
            } else if (!failing.exchange(true)) {
              log::Warn("edge",
                        "billing RecordUsage failed; the records stay spooled and are "
                        "sent again",
                        {{"records", n},
                         {"spooled", spool.records()},
                         {"grpc_code", static_cast<int>(status.error_code())}});
            }
            UpdateGauges();
            std::lock_guard guard(mu);
            if (!status.ok())
              next_try = std::chrono::steady_clock::now() + options.retry_pause;
            else
              wake_sender = true;  // more may be waiting: no need to wait for the tick
            batch_in_flight = false;
            cv.notify_all();
          });
    }
  }

  GrpcBillingClientOptions options;
  Spool spool;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::BillingService::Stub> stub;
  CallTracker calls;
  std::mutex mu;  // everything below but the atomics
  std::condition_variable cv;
  std::deque<std::string> incoming;  // serialized pb::UsageRecord, not spooled yet
  bool batch_in_flight = false;
  bool wake_sender = false;
  std::chrono::steady_clock::time_point next_try;
  bool stopping = false;
  bool full_logged = false;  // sender thread only
  std::atomic<bool> failing{false};
  std::atomic<int64_t> delivered{0};
  prometheus::Counter* spooled_counter = nullptr;
  prometheus::Counter* delivered_counter = nullptr;
  prometheus::Counter* dropped_counter = nullptr;
  prometheus::Gauge* spool_records_gauge = nullptr;
  prometheus::Gauge* spool_bytes_gauge = nullptr;
  prometheus::Counter* holds_granted = nullptr;
  prometheus::Counter* holds_refused = nullptr;
  prometheus::Counter* holds_unavailable = nullptr;
  std::thread sender;
};

GrpcBillingClient::GrpcBillingClient(GrpcBillingClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

GrpcBillingClient::~GrpcBillingClient() { Shutdown(); }

void GrpcBillingClient::Shutdown() { impl_->Shutdown(); }

void GrpcBillingClient::Hold(HoldRequest request, std::function<void(HoldResult)> done) {
  const int64_t user_id = ParseId(request.principal.user_id);
  if (user_id == 0) {
    done(HoldResult{});  // not one of auth's users: nobody to charge, nothing to hold
    return;
  }
  pb::HoldRequest hold;
  hold.set_request_id(request.request_id);
  hold.set_user_id(user_id);
  hold.set_api_key_id(ParseId(request.principal.api_key_id));
  hold.set_model(request.model);
  hold.set_estimated_prompt_tokens(std::max<int64_t>(0, request.estimated_prompt_tokens));
  hold.set_max_completion_tokens(std::max<int64_t>(0, request.max_completion_tokens));
  hold.set_service_tier(request.service_tier);
  hold.set_images(request.images);
  hold.set_audio_milliseconds(request.audio_ms);
  hold.set_characters(request.characters);
  hold.set_min_amount_micros(std::max<int64_t>(0, request.min_amount_micros));
  Impl* impl = impl_.get();
  CallUnary<pb::HoldResponse>(
      impl->calls, impl->options.timeout, std::move(hold),
      [impl](auto... a) { impl->stub->async()->Hold(a...); },
      [impl, done = std::move(done)](const grpc::Status& status, pb::HoldResponse& response) {
        HoldResult result;
        if (status.ok()) {
          if (response.hold_id() != 0) result.hold_id = std::to_string(response.hold_id());
          if (impl->holds_granted) impl->holds_granted->Increment();
          done(std::move(result));
          return;
        }
        if (!Unreachable(status)) {
          Failure answered = AnsweredError(status);
          if (answered.code == ErrorCode::kInsufficientQuota ||
              answered.code == ErrorCode::kRateLimited) {
            result.failure = Failure{ErrorCode::kInsufficientQuota, std::move(answered.message)};
            if (impl->holds_refused) impl->holds_refused->Increment();
            done(std::move(result));
            return;
          }
        }
        // Unreachable, or an error nobody could charge through: fail closed.
        static log::Throttle throttle;
        if (int64_t skipped = 0; throttle.Allow(&skipped))
          log::Warn(
              "edge", "billing Hold failed; refusing the request (fail closed)",
              {{"grpc_code", static_cast<int>(status.error_code())}, {"suppressed", skipped}});
        result.failure = Failure{ErrorCode::kServiceUnavailable, kUnavailable};
        if (impl->holds_unavailable) impl->holds_unavailable->Increment();
        done(std::move(result));
      });
}

void GrpcBillingClient::Release(std::string hold_id) {
  const int64_t id = ParseId(hold_id);
  if (id == 0) return;
  pb::ReleaseHoldRequest request;
  request.set_hold_id(id);
  Impl* impl = impl_.get();
  // Not sent once shut down (or if it fails): the hold then expires on its own.
  CallUnary<pb::ReleaseHoldResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->ReleaseHold(a...); },
      [](const grpc::Status& status, pb::ReleaseHoldResponse&) {
        if (!status.ok())
          log::Debug("edge", "billing ReleaseHold failed",
                     {{"grpc_code", static_cast<int>(status.error_code())}});
      });
}

void GrpcBillingClient::Record(UsageRecord record) {
  const int64_t user_id = ParseId(record.principal.user_id);
  if (user_id == 0) return;  // not one of auth's users: nobody to charge
  pb::UsageRecord r;
  r.set_request_id(record.billing_id.empty() ? record.request_id : record.billing_id);
  r.set_user_id(user_id);
  r.set_api_key_id(ParseId(record.principal.api_key_id));
  r.set_model(record.model);
  r.set_upstream_model(record.upstream_model);
  r.set_upstream_key_id(record.upstream_key_id);
  r.set_hold_id(ParseId(record.hold_id));
  r.set_prompt_tokens(std::max<int64_t>(0, record.prompt_tokens));
  r.set_completion_tokens(std::max<int64_t>(0, record.completion_tokens));
  r.set_cached_tokens(std::max<int64_t>(0, record.cached_tokens));
  r.set_cache_write_tokens(std::max<int64_t>(0, record.cache_write_tokens));
  r.set_usage_estimated(record.usage_estimated);
  r.set_streamed(record.streamed);
  r.set_service_tier(record.service_tier);
  r.set_endpoint_kind(record.endpoint_kind);
  r.set_images(std::max<int64_t>(0, record.images));
  r.set_image_size(record.image_size.substr(0, 64));
  r.set_image_quality(record.image_quality.substr(0, 64));
  r.set_audio_milliseconds(std::max<int64_t>(0, record.audio_ms));
  r.set_characters(std::max<int64_t>(0, record.characters));
  r.set_status(record.http_status);
  r.set_latency_ms(record.latency.count());
  r.set_client_disconnected(record.client_disconnected);
  r.set_attempts(record.attempts);
  r.set_client_ip(record.client_ip);
  r.set_request_body(std::move(record.request_body));
  r.set_response_body(std::move(record.response_body));
  r.set_bodies_truncated(record.bodies_truncated);
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  r.set_finished_at_ms(now_ms);
  r.set_started_at_ms(now_ms - record.latency.count());
  std::string payload = r.SerializeAsString();
  bool wake = false;
  {
    std::lock_guard lock(impl_->mu);
    // The spool bounds what waits for billing; this only bounds a sender stuck on its disk.
    if (impl_->incoming.size() >= 100000) {
      impl_->CountDropped(1);
      return;
    }
    impl_->incoming.push_back(std::move(payload));
    wake = impl_->incoming.size() >= impl_->options.batch_size;
  }
  if (wake) impl_->cv.notify_all();
}

void GrpcBillingClient::GetAccount(const Principal& principal,
                                   std::function<void(AccountResult)> done) {
  const int64_t user_id = ParseId(principal.user_id);
  if (user_id == 0) {
    done(AccountResult{});  // no account
    return;
  }
  pb::GetAccountRequest request;
  request.set_user_id(user_id);
  Impl* impl = impl_.get();
  CallUnary<pb::GetAccountResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->GetAccount(a...); },
      [done = std::move(done)](const grpc::Status& status, pb::GetAccountResponse& response) {
        AccountResult result;
        if (status.ok()) {
          const auto& a = response.account();
          result.found = true;
          result.balance_micros = a.balance_micros();
          result.credit_limit_micros = a.credit_limit_micros();
          result.held_micros = a.held_micros();
          result.available_micros = a.available_micros();
          result.total_top_ups_micros = a.total_top_ups_micros();
          result.total_cost_micros = a.total_cost_micros();
        } else if (Unreachable(status) || AnsweredError(status).code != ErrorCode::kNotFound) {
          log::Warn("edge", "billing GetAccount failed",
                    {{"grpc_code", static_cast<int>(status.error_code())}});
          result.failure = Failure{ErrorCode::kServiceUnavailable,
                                   "The billing service is unavailable. Please retry shortly."};
        }  // else not found: the user has no account
        done(std::move(result));
      });
}

void GrpcBillingClient::GetUsage(const Principal& principal, bool key_only, std::string from_day,
                                 std::string to_day, std::function<void(UsageResult)> done) {
  const int64_t user_id = ParseId(principal.user_id);
  if (user_id == 0) {
    done(UsageResult{});  // nobody billed: no usage
    return;
  }
  pb::GetUsageRequest request;
  request.set_user_id(user_id);
  if (key_only) request.set_api_key_id(ParseId(principal.api_key_id));
  request.set_from_day(std::move(from_day));
  request.set_to_day(std::move(to_day));
  Impl* impl = impl_.get();
  CallUnary<pb::GetUsageResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->GetUsage(a...); },
      [done = std::move(done)](const grpc::Status& status, pb::GetUsageResponse& response) {
        UsageResult result;
        if (status.ok()) {
          for (const auto& row : response.rows())
            result.days.push_back({row.day(), row.requests(), row.prompt_tokens(),
                                   row.completion_tokens(), row.cached_tokens(),
                                   row.cost_micros()});
          done(std::move(result));
          return;
        }
        if (!Unreachable(status)) {
          Failure answered = AnsweredError(status);
          if (answered.code == ErrorCode::kInvalidRequest) {
            result.failure = std::move(answered);  // a bad date range, named by billing
            done(std::move(result));
            return;
          }
        }
        log::Warn("edge", "billing GetUsage failed",
                  {{"grpc_code", static_cast<int>(status.error_code())}});
        result.failure = Failure{ErrorCode::kServiceUnavailable,
                                 "The billing service is unavailable. Please retry shortly."};
        done(std::move(result));
      });
}

int64_t GrpcBillingClient::delivered() const {
  return impl_->delivered.load(std::memory_order_relaxed);
}
size_t GrpcBillingClient::spooled() const { return impl_->spool.records(); }

}  // namespace tollgate::edge
