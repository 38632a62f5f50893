#include "src/local_router.h"

#include <grpcpp/grpcpp.h>

#include "tollgate/grpc_server.h"
#include "tollgate/log.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::edge {
namespace {

namespace pb = ::tollgate::router::v1;
using Clock = std::chrono::steady_clock;

ProviderKind ToKind(router::ProviderType t) {
  switch (t) {
    case router::ProviderType::kAzureOpenAi:
      return ProviderKind::kAzureOpenAi;
    case router::ProviderType::kOpenAiCompatible:
      return ProviderKind::kOpenAiCompatible;
    case router::ProviderType::kAnthropic:
      return ProviderKind::kAnthropic;
    case router::ProviderType::kOpenAi:
      break;
  }
  return ProviderKind::kOpenAi;
}

router::ProviderType FromProto(pb::ProviderType t) {
  switch (t) {
    case pb::PROVIDER_TYPE_AZURE_OPENAI:
      return router::ProviderType::kAzureOpenAi;
    case pb::PROVIDER_TYPE_OPENAI_COMPATIBLE:
      return router::ProviderType::kOpenAiCompatible;
    case pb::PROVIDER_TYPE_ANTHROPIC:
      return router::ProviderType::kAnthropic;
    default:
      return router::ProviderType::kOpenAi;
  }
}

router::OutcomeKind ToPool(OutcomeKind k) {
  switch (k) {
    case OutcomeKind::kSuccess:
      return router::OutcomeKind::kSuccess;
    case OutcomeKind::kConnectError:
      return router::OutcomeKind::kConnectError;
    case OutcomeKind::kTimeout:
      return router::OutcomeKind::kTimeout;
    case OutcomeKind::kServerError:
      return router::OutcomeKind::kServerError;
    case OutcomeKind::kRateLimited:
      return router::OutcomeKind::kRateLimited;
    case OutcomeKind::kClientError:
      return router::OutcomeKind::kClientError;
    case OutcomeKind::kAuthError:
      return router::OutcomeKind::kAuthError;
  }
  return router::OutcomeKind::kUnspecified;
}

UpstreamAttempt ToAttempt(router::RouteAttempt a) {
  UpstreamAttempt attempt;
  attempt.upstream_key_id = a.key_id;
  attempt.provider = ToKind(a.provider_type);
  attempt.base_url = std::move(a.base_url);
  attempt.upstream_model = std::move(a.upstream_model);
  attempt.api_key = std::move(a.api_key);
  attempt.api_version = std::move(a.api_version);
  return attempt;
}

}  // namespace

struct LocalRouterClient::Impl {
  Impl(LocalRouterOptions opts, RouterClient& remote_client)
      : options(std::move(opts)),
        remote(remote_client),
        channel(MakeChannel(options.target)),
        stub(pb::RouterService::NewStub(channel)) {}

  LocalRouterOptions options;
  RouterClient& remote;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::RouterService::Stub> stub;
  RealClock clock;

  mutable std::mutex mu;  // guards pool (the pointer), policy, version, loaded_at
  std::shared_ptr<router::KeyPool> pool;
  router::KeyPoolOptions policy;
  int64_t version = 0;
  Clock::time_point loaded_at{};

  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool stopping = false;
  bool wake = false;  // an unknown model was asked for: poll now
  std::thread poller;
  std::atomic<bool> failing{false};  // said once, not every poll

  std::shared_ptr<router::KeyPool> Current() {
    std::lock_guard lock(mu);
    if (!pool || Clock::now() - loaded_at > options.max_staleness) return nullptr;
    return pool;
  }

  bool Refresh() {
    pb::GetRoutingTableRequest request;
    {
      std::lock_guard lock(mu);
      request.set_known_version(pool ? version : 0);
    }
    pb::GetRoutingTableResponse response;
    grpc::ClientContext context;
    SetDeadline(context, options.timeout);
    grpc::Status status = stub->GetRoutingTable(&context, request, &response);
    if (!status.ok()) {
      if (!failing)
        log::Warn("edge", "routing table refresh failed; planning with the last one",
                  {{"grpc_code", static_cast<int>(status.error_code())}});
      failing = true;
      return false;
    }
    if (failing) log::Info("edge", "routing table refresh recovered");
    failing = false;
    if (response.unchanged()) {
      std::lock_guard lock(mu);
      loaded_at = Clock::now();
      return true;
    }
    router::Catalogue catalogue;
    for (const auto& p : response.providers())
      catalogue.providers.push_back({p.id(), p.name(), FromProto(p.type()), p.base_url(),
                                     p.api_version(), p.enabled(), p.created()});
    // The secret travels opened; the pool's opener hands it back as is (a key that the router
    // could not decrypt arrives unusable and stays out of rotation).
    for (const auto& k : response.keys()) {
      router::UpstreamKeyRecord r;
      r.id = k.id();
      r.provider_id = k.provider_id();
      r.secret.ciphertext = k.usable() ? k.secret() : std::string();
      r.secret.nonce = k.nonce();
      r.weight = k.weight();
      r.enabled = k.enabled();
      catalogue.keys.push_back(std::move(r));
    }
    for (const auto& m : response.models())
      catalogue.models.push_back(
          {m.name(), m.owned_by(), m.created(), m.max_output_tokens(), m.default_max_tokens()});
    for (const auto& r : response.routes())
      catalogue.routes.push_back({r.model(), r.provider_id(), r.upstream_model()});
    for (const auto& a : response.aliases()) catalogue.aliases.push_back({a.alias(), a.model()});
    router::KeyPoolOptions policy;
    const auto& p = response.policy();
    if (p.failure_threshold() > 0) policy.failure_threshold = p.failure_threshold();
    if (p.breaker_cooldown_ms() > 0)
      policy.breaker_cooldown = std::chrono::milliseconds(p.breaker_cooldown_ms());
    if (p.trial_timeout_ms() > 0)
      policy.trial_timeout = std::chrono::milliseconds(p.trial_timeout_ms());
    if (p.rate_limit_cooldown_ms() > 0)
      policy.rate_limit_cooldown = std::chrono::milliseconds(p.rate_limit_cooldown_ms());
    if (p.max_attempts() > 0) policy.max_attempts = p.max_attempts();

    std::shared_ptr<router::KeyPool> target;
    {
      std::lock_guard lock(mu);
      bool same_policy = pool && policy.failure_threshold == this->policy.failure_threshold &&
                         policy.breaker_cooldown == this->policy.breaker_cooldown &&
                         policy.trial_timeout == this->policy.trial_timeout &&
                         policy.rate_limit_cooldown == this->policy.rate_limit_cooldown &&
                         policy.max_attempts == this->policy.max_attempts;
      // Health survives a new catalogue (Replace keeps it); a new policy starts a new pool.
      target = same_policy ? pool : std::make_shared<router::KeyPool>(policy, clock);
    }
    target->Replace(catalogue,
                    [](const router::UpstreamKeyRecord& k) -> std::optional<std::string> {
                      if (k.secret.ciphertext.empty()) return std::nullopt;
                      return k.secret.ciphertext;
                    });
    std::lock_guard lock(mu);
    pool = std::move(target);
    this->policy = policy;
    version = response.version();
    loaded_at = Clock::now();
    return true;
  }

  void WakePoller() {
    {
      std::lock_guard lock(stop_mu);
      wake = true;
    }
    stop_cv.notify_all();
  }

  void Loop() {
    std::unique_lock lock(stop_mu);
    while (!stopping) {
      wake = false;
      lock.unlock();
      Refresh();
      lock.lock();
      // Early polls (unknown models) at most every 100 ms, however many ask.
      const auto pause = std::min(options.refresh, std::chrono::milliseconds(100));
      stop_cv.wait_for(lock, pause, [this] { return stopping; });
      stop_cv.wait_for(lock, options.refresh - pause, [this] { return stopping || wake; });
    }
  }
};

LocalRouterClient::LocalRouterClient(LocalRouterOptions options, RouterClient& remote)
    : impl_(std::make_unique<Impl>(std::move(options), remote)) {
  impl_->poller = std::thread([impl = impl_.get()] { impl->Loop(); });
}

LocalRouterClient::~LocalRouterClient() { Stop(); }

void LocalRouterClient::Stop() {
  {
    std::lock_guard lock(impl_->stop_mu);
    impl_->stopping = true;
  }
  impl_->stop_cv.notify_all();
  if (impl_->poller.joinable()) impl_->poller.join();
}

bool LocalRouterClient::RefreshOnce() { return impl_->Refresh(); }

bool LocalRouterClient::has_table() const { return impl_->Current() != nullptr; }

void LocalRouterClient::Route(std::string model, int32_t max_attempts,
                              std::function<void(RouteResult)> done) {
  auto pool = impl_->Current();
  if (!pool) {
    impl_->remote.Route(std::move(model), max_attempts, std::move(done));
    return;
  }
  router::RouteResult planned = pool->Route(model, std::max(0, max_attempts));
  if (planned.status == router::RouteResult::Status::kModelNotFound ||
      planned.status == router::RouteResult::Status::kNoRoute) {
    // Perhaps added since the last poll (a new model, or its route or key: an operator creates
    // the model and then routes it, and a poll between the two sees a model nothing serves):
    // the router knows at once. Poll early, too.
    impl_->WakePoller();
    impl_->remote.Route(std::move(model), max_attempts, std::move(done));
    return;
  }
  RouteResult result;
  switch (planned.status) {
    case router::RouteResult::Status::kModelNotFound:
    case router::RouteResult::Status::kNoRoute:
      break;
    case router::RouteResult::Status::kNoHealthyUpstream:
      result.failure =
          Failure{ErrorCode::kNoHealthyUpstream, "No healthy upstream is available for model '" +
                                                     model.substr(0, 256) + "'. Retry later."};
      break;
    case router::RouteResult::Status::kOk:
      result.model = planned.model;
      result.limits = {planned.max_output_tokens, planned.default_max_tokens};
      for (auto& a : planned.attempts) result.attempts.push_back(ToAttempt(std::move(a)));
      break;
  }
  done(std::move(result));
}

void LocalRouterClient::Report(AttemptOutcome outcome) {
  if (auto pool = impl_->Current())
    pool->Report({outcome.upstream_key_id, ToPool(outcome.kind), outcome.retry_after_ms,
                  outcome.upstream_model});
  impl_->remote.Report(outcome);
}

void LocalRouterClient::KeyAttempt(std::string model, int64_t key_id,
                                   std::function<void(RouteResult)> done) {
  auto pool = impl_->Current();
  if (!pool) {
    RouterClient::KeyAttempt(std::move(model), key_id, std::move(done));
    return;
  }
  router::RouteResult planned = pool->KeyAttempt(model, key_id);
  RouteResult result;
  if (planned.status != router::RouteResult::Status::kOk) {
    result.failure = Failure{ErrorCode::kNotFound, "No longer served."};
  } else {
    result.model = planned.model;
    result.limits = {planned.max_output_tokens, planned.default_max_tokens};
    result.attempts.push_back(ToAttempt(std::move(planned.attempts.front())));
  }
  done(std::move(result));
}

void LocalRouterClient::ListModels(std::function<void(ModelsResult)> done) {
  auto pool = impl_->Current();
  if (!pool) {
    impl_->remote.ListModels(std::move(done));
    return;
  }
  ModelsResult result;
  for (auto& m : pool->ListModels()) result.models.push_back({m.id, m.created, m.owned_by});
  done(std::move(result));
}

}  // namespace tollgate::edge
