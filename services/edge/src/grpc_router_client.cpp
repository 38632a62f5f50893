#include "src/grpc_router_client.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "tollgate/grpc_errors.h"
#include "tollgate/grpc_server.h"
#include "tollgate/log.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::router::v1;
using Clock = std::chrono::steady_clock;

constexpr int kMaxBatchesInFlight = 4;

ProviderKind FromProto(pb::ProviderType type) {
  switch (type) {
    case pb::PROVIDER_TYPE_AZURE_OPENAI:
      return ProviderKind::kAzureOpenAi;
    case pb::PROVIDER_TYPE_OPENAI_COMPATIBLE:
      return ProviderKind::kOpenAiCompatible;
    default:
      return ProviderKind::kOpenAi;
  }
}

pb::OutcomeKind ToProto(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSuccess:
      return pb::OUTCOME_KIND_SUCCESS;
    case OutcomeKind::kConnectError:
      return pb::OUTCOME_KIND_CONNECT_ERROR;
    case OutcomeKind::kTimeout:
      return pb::OUTCOME_KIND_TIMEOUT;
    case OutcomeKind::kServerError:
      return pb::OUTCOME_KIND_SERVER_ERROR;
    case OutcomeKind::kRateLimited:
      return pb::OUTCOME_KIND_RATE_LIMITED;
    case OutcomeKind::kClientError:
      return pb::OUTCOME_KIND_CLIENT_ERROR;
    case OutcomeKind::kAuthError:
      return pb::OUTCOME_KIND_AUTH_ERROR;
  }
  return pb::OUTCOME_KIND_UNSPECIFIED;
}

bool RouterUnreachable(const grpc::Status& status) {
  return (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
          FromGrpcStatus(status) != ErrorCode::kNoHealthyUpstream) ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         status.error_code() == grpc::StatusCode::CANCELLED;
}

// What the client sees when Route fails; the router's own message is logged, not returned.
Failure RouteFailure(const grpc::Status& status, const std::string& model) {
  if (status.error_code() == grpc::StatusCode::NOT_FOUND)
    return {ErrorCode::kModelNotFound,
            "The model '" + model + "' does not exist or you do not have access to it."};
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      FromGrpcStatus(status) == ErrorCode::kNoHealthyUpstream)
    return {ErrorCode::kNoHealthyUpstream,
            "No healthy upstream is available for model '" + model + "'. Retry later."};
  if (RouterUnreachable(status))
    return {ErrorCode::kServiceUnavailable, "The routing service is unavailable. Retry later."};
  ErrorCode code = FromGrpcStatus(status);
  if (code == ErrorCode::kInvalidRequest) return {code, status.error_message()};
  return {ErrorCode::kInternal, "The routing service failed."};
}

}  // namespace

struct GrpcRouterClient::Impl {
  explicit Impl(GrpcRouterClientOptions opts)
      : options(std::move(opts)),
        channel(MakeChannel(options.target)),
        stub(pb::RouterService::NewStub(channel)),
        flusher([this] { FlushLoop(); }) {
    // Connect now, so the first request does not pay for the HTTP/2 handshake.
    channel->GetState(/*try_to_connect=*/true);
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    {
      std::lock_guard lock(mu);
      if (stopping) return;
      stopping = true;
    }
    cv.notify_all();
    flusher.join();  // the last outcomes are on their way
    std::unique_lock lock(mu);
    for (auto* context : live_calls) context->TryCancel();
    cv.wait(lock, [&] { return calls_in_flight == 0; });
  }

  // False once shut down: the caller fails the call inline.
  bool CallStarted(grpc::ClientContext* context) {
    std::lock_guard lock(mu);
    if (stopping) return false;
    ++calls_in_flight;
    live_calls.insert(context);
    return true;
  }

  void CallEnded(grpc::ClientContext* context) {
    std::lock_guard lock(mu);
    --calls_in_flight;
    live_calls.erase(context);
    cv.notify_all();
  }
  // Ends a call whose objects `owned` holds: they are destroyed before the count drops, so
  // Shutdown (and the channel's destruction after it) never races a callback thread that still
  // holds the call. gRPC 1.51 aborts ("assertion failed: prior > 0" in its callback completion
  // queue) when a channel's last reference goes on one of its own callback threads.
  template <typename Owned>
  void CallEnded(grpc::ClientContext* context, Owned& owned) {
    {
      std::lock_guard lock(mu);
      live_calls.erase(context);
    }
    owned.reset();
    CallEnded(nullptr);
  }

  void FlushLoop() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait_for(lock, options.flush_interval, [&] {
        return stopping ||
               (queue.size() >= options.batch_size && batches_in_flight < kMaxBatchesInFlight);
      });
      // On the way out, send everything; a batch's own deadline bounds the wait.
      while (!queue.empty() && (stopping || batches_in_flight < kMaxBatchesInFlight)) {
        auto call = std::make_unique<BatchCall>();
        size_t n = std::min(queue.size(), options.batch_size);
        for (size_t i = 0; i < n; ++i) {
          const auto& o = queue.front();
          auto* out = call->request.add_outcomes();
          out->set_upstream_key_id(o.upstream_key_id);
          out->set_kind(ToProto(o.kind));
          out->set_http_status(o.http_status);
          out->set_retry_after_ms(o.retry_after_ms);
          out->set_latency_ms(o.latency_ms);
          out->set_upstream_model(o.upstream_model);
          queue.pop_front();
        }
        ++batches_in_flight;
        ++calls_in_flight;
        lock.unlock();
        SetDeadline(call->context, options.timeout);
        auto* raw = call.release();
        stub->async()->ReportOutcomes(
            &raw->context, &raw->request, &raw->response, [this, raw, n](grpc::Status status) {
              std::unique_ptr<BatchCall> owned(raw);
              if (status.ok()) {
                sent.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
              } else {
                dropped.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
                log::Warn("edge", "router ReportOutcomes failed; outcomes dropped",
                          {{"outcomes", n},
                           {"grpc_code", static_cast<int>(status.error_code())},
                           {"error", status.error_message()}});
              }
              owned.reset();  // before the count drops (see CallEnded)
              std::lock_guard guard(mu);
              --batches_in_flight;
              --calls_in_flight;
              cv.notify_all();
            });
        lock.lock();
      }
      if (stopping && queue.empty()) return;
    }
  }

  struct BatchCall {
    grpc::ClientContext context;
    pb::ReportOutcomesRequest request;
    pb::ReportOutcomesResponse response;
  };

  struct StalePlan {
    Clock::time_point at;
    RouteResult result;
  };

  GrpcRouterClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::RouterService::Stub> stub;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<AttemptOutcome> queue;
  int batches_in_flight = 0;
  int calls_in_flight = 0;
  std::unordered_set<grpc::ClientContext*> live_calls;  // Route and ListModels, for TryCancel
  bool stopping = false;
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> dropped{0};
  std::mutex plans_mu;
  std::unordered_map<std::string, StalePlan> last_plans;
  std::thread flusher;  // last: starts once everything above exists
};

GrpcRouterClient::GrpcRouterClient(GrpcRouterClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

GrpcRouterClient::~GrpcRouterClient() = default;

void GrpcRouterClient::Shutdown() { impl_->Shutdown(); }

void GrpcRouterClient::Route(std::string model, int32_t max_attempts,
                             std::function<void(RouteResult)> done) {
  struct Call {
    grpc::ClientContext context;
    pb::RouteRequest request;
    pb::RouteResponse response;
    std::function<void(RouteResult)> done;
  };
  auto call = std::make_unique<Call>();
  call->request.set_model(model);
  call->request.set_max_attempts(max_attempts);
  call->done = std::move(done);
  SetDeadline(call->context, impl_->options.timeout);
  if (!impl_->CallStarted(&call->context)) {
    call->done(RouteResult{Failure{ErrorCode::kServiceUnavailable, "The edge is shutting down."}});
    return;
  }
  auto* raw = call.release();
  Impl* impl = impl_.get();
  impl->stub->async()->Route(
      &raw->context, &raw->request, &raw->response, [impl, raw](grpc::Status status) {
        std::unique_ptr<Call> owned(raw);
        RouteResult result;
        const std::string& model = owned->request.model();
        if (status.ok()) {
          result.model = owned->response.model().empty() ? model : owned->response.model();
          result.limits = {owned->response.max_output_tokens(),
                           owned->response.default_max_tokens()};
          for (const auto& a : owned->response.attempts()) {
            UpstreamAttempt attempt;
            attempt.upstream_key_id = a.upstream_key_id();
            attempt.provider = FromProto(a.provider_type());
            attempt.base_url = a.base_url();
            attempt.upstream_model = a.upstream_model();
            attempt.api_key = a.api_key();
            attempt.api_version = a.api_version();
            attempt.trial = a.trial();
            result.attempts.push_back(std::move(attempt));
          }
          if (impl->options.stale_plan_ttl.count() > 0) {
            // Refreshed at most once a second per model: a copy per request is not needed.
            auto now = Clock::now();
            std::lock_guard lock(impl->plans_mu);
            auto& last = impl->last_plans[model];
            if (now - last.at >= std::chrono::seconds(1)) last = {now, result};
          }
        } else {
          bool stale_used = false;
          if (RouterUnreachable(status) && impl->options.stale_plan_ttl.count() > 0) {
            std::lock_guard lock(impl->plans_mu);
            auto it = impl->last_plans.find(model);
            if (it != impl->last_plans.end() &&
                Clock::now() - it->second.at < impl->options.stale_plan_ttl) {
              result = it->second.result;
              stale_used = true;
            }
          }
          // An unknown model is the client's business; anything else is worth a warning (one a
          // second at most: under load a router outage would otherwise log every request).
          static log::Throttle throttle;
          int64_t skipped = 0;
          if (status.error_code() == grpc::StatusCode::NOT_FOUND ? log::Enabled(log::Level::kDebug)
                                                                 : throttle.Allow(&skipped))
            log::Write(status.error_code() == grpc::StatusCode::NOT_FOUND ? log::Level::kDebug
                                                                          : log::Level::kWarn,
                       "edge",
                       stale_used ? "router unreachable; using its last plan" : "route failed",
                       {{"model", model},
                        {"grpc_code", static_cast<int>(status.error_code())},
                        {"error", status.error_message()},
                        {"suppressed", skipped}});
          if (!stale_used) result.failure = RouteFailure(status, model);
        }
        owned->done(std::move(result));
        impl->CallEnded(&owned->context, owned);
      });
}

void GrpcRouterClient::Report(AttemptOutcome outcome) {
  bool wake = false;
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.push_back(outcome);
    if (impl_->queue.size() > impl_->options.max_queued) {
      impl_->queue.pop_front();
      impl_->dropped.fetch_add(1, std::memory_order_relaxed);
    }
    wake = impl_->queue.size() >= impl_->options.batch_size;
  }
  if (wake) impl_->cv.notify_all();
}

void GrpcRouterClient::ListModels(std::function<void(ModelsResult)> done) {
  struct Call {
    grpc::ClientContext context;
    pb::ListModelsRequest request;
    pb::ListModelsResponse response;
    std::function<void(ModelsResult)> done;
  };
  auto call = std::make_unique<Call>();
  call->done = std::move(done);
  SetDeadline(call->context, impl_->options.timeout);
  if (!impl_->CallStarted(&call->context)) {
    call->done(ModelsResult{Failure{ErrorCode::kServiceUnavailable, "The edge is shutting down."}});
    return;
  }
  auto* raw = call.release();
  Impl* impl = impl_.get();
  impl->stub->async()->ListModels(
      &raw->context, &raw->request, &raw->response, [impl, raw](grpc::Status status) {
        std::unique_ptr<Call> owned(raw);
        ModelsResult result;
        if (status.ok()) {
          for (const auto& m : owned->response.models())
            result.models.push_back({m.id(), m.created(), m.owned_by()});
        } else {
          log::Warn("edge", "router ListModels failed",
                    {{"grpc_code", static_cast<int>(status.error_code())},
                     {"error", status.error_message()}});
          result.failure = Failure{ErrorCode::kServiceUnavailable,
                                   "The routing service is unavailable. Retry later."};
        }
        owned->done(std::move(result));
        impl->CallEnded(&owned->context, owned);
      });
}

int64_t GrpcRouterClient::outcomes_sent() const {
  return impl_->sent.load(std::memory_order_relaxed);
}

int64_t GrpcRouterClient::outcomes_dropped() const {
  return impl_->dropped.load(std::memory_order_relaxed);
}

}  // namespace tollgate::edge
