#include "src/grpc_router_client.h"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "src/grpc_call.h"
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
    case pb::PROVIDER_TYPE_ANTHROPIC:
      return ProviderKind::kAnthropic;
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

// What the client sees when Route fails; the router's own message is logged, not returned.
Failure RouteFailure(const grpc::Status& status, const std::string& model) {
  if (Unreachable(status))
    return {ErrorCode::kServiceUnavailable, "The routing service is unavailable. Retry later."};
  Failure answered = AnsweredError(status);
  switch (answered.code) {
    case ErrorCode::kNotFound:
    case ErrorCode::kModelNotFound:
      return {ErrorCode::kModelNotFound,
              "The model '" + model + "' does not exist or you do not have access to it."};
    case ErrorCode::kNoHealthyUpstream:
      return {ErrorCode::kNoHealthyUpstream,
              "No healthy upstream is available for model '" + model + "'. Retry later."};
    case ErrorCode::kInvalidRequest:
      return answered;
    default:
      return {ErrorCode::kInternal, "The routing service failed."};
  }
}

}  // namespace

struct GrpcRouterClient::Impl {
  explicit Impl(GrpcRouterClientOptions opts)
      : options(std::move(opts)),
        channel(OpenChannel(options.target)),
        stub(pb::RouterService::NewStub(channel)),
        flusher([this] { FlushLoop(); }) {}

  ~Impl() { Shutdown(); }

  void Shutdown() {
    if (!calls.Stop()) return;  // Route and ListModels are refused from here on
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    cv.notify_all();
    flusher.join();  // the last outcomes are on their way
    calls.Drain();
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
        pb::ReportOutcomesRequest request;
        size_t n = std::min(queue.size(), options.batch_size);
        for (size_t i = 0; i < n; ++i) {
          const auto& o = queue.front();
          auto* out = request.add_outcomes();
          out->set_upstream_key_id(o.upstream_key_id);
          out->set_kind(ToProto(o.kind));
          out->set_http_status(o.http_status);
          out->set_retry_after_ms(o.retry_after_ms);
          out->set_latency_ms(o.latency_ms);
          out->set_upstream_model(o.upstream_model);
          queue.pop_front();
        }
        ++batches_in_flight;
        lock.unlock();
        CallUnary<pb::ReportOutcomesResponse>(
            calls, options.timeout, std::move(request),
            [this](auto... a) { stub->async()->ReportOutcomes(a...); },
            [this, n](const grpc::Status& status, pb::ReportOutcomesResponse&) {
              if (!status.ok())
                log::Warn("edge", "router ReportOutcomes failed; outcomes dropped",
                          {{"outcomes", n},
                           {"grpc_code", static_cast<int>(status.error_code())},
                           {"error", status.error_message()}});
              std::lock_guard guard(mu);
              --batches_in_flight;
              cv.notify_all();
            },
            CallTracker::Kind::kDelivery);
        lock.lock();
      }
      if (stopping && queue.empty()) return;
    }
  }

  struct StalePlan {
    Clock::time_point at;
    RouteResult result;
  };

  GrpcRouterClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::RouterService::Stub> stub;
  CallTracker calls;
  std::mutex mu;  // the outcome queue and the flusher's state
  std::condition_variable cv;
  std::deque<AttemptOutcome> queue;
  int batches_in_flight = 0;
  bool stopping = false;
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
  pb::RouteRequest request;
  request.set_model(model);
  request.set_max_attempts(max_attempts);
  Impl* impl = impl_.get();
  CallUnary<pb::RouteResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->Route(a...); },
      [impl, model = std::move(model), done = std::move(done)](const grpc::Status& status,
                                                               pb::RouteResponse& response) {
        RouteResult result;
        if (status.ok()) {
          result.model = response.model().empty() ? model : response.model();
          result.limits = {response.max_output_tokens(), response.default_max_tokens()};
          for (const auto& a : response.attempts()) {
            UpstreamAttempt attempt;
            attempt.upstream_key_id = a.upstream_key_id();
            attempt.provider = FromProto(a.provider_type());
            attempt.base_url = a.base_url();
            attempt.upstream_model = a.upstream_model();
            attempt.api_key = a.api_key();
            attempt.api_version = a.api_version();
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
          if (Unreachable(status) && impl->options.stale_plan_ttl.count() > 0) {
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
        done(std::move(result));
      });
}

void GrpcRouterClient::Report(AttemptOutcome outcome) {
  bool wake = false;
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.push_back(outcome);
    if (impl_->queue.size() > impl_->options.max_queued) impl_->queue.pop_front();
    // The flusher is woken when a batch fills up, once; a batch's answer wakes it for the rest.
    wake = impl_->queue.size() == impl_->options.batch_size;
  }
  if (wake) impl_->cv.notify_all();
}

void GrpcRouterClient::ListModels(std::function<void(ModelsResult)> done) {
  Impl* impl = impl_.get();
  CallUnary<pb::ListModelsResponse>(
      impl->calls, impl->options.timeout, pb::ListModelsRequest(),
      [impl](auto... a) { impl->stub->async()->ListModels(a...); },
      [done = std::move(done)](const grpc::Status& status, pb::ListModelsResponse& response) {
        ModelsResult result;
        if (status.ok()) {
          for (const auto& m : response.models())
            result.models.push_back({m.id(), m.created(), m.owned_by()});
        } else {
          // Whatever the reason (the router answers no error of its own here): 503.
          log::Warn("edge", "router ListModels failed",
                    {{"grpc_code", static_cast<int>(status.error_code())},
                     {"error", status.error_message()}});
          result.failure = Failure{ErrorCode::kServiceUnavailable,
                                   "The routing service is unavailable. Retry later."};
        }
        done(std::move(result));
      });
}

}  // namespace tollgate::edge
