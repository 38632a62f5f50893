#include "src/grpc_services.h"

#include <chrono>
#include <string>

#include "tollgate/admin_call.h"
#include "tollgate/audit_grpc.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/log.h"

namespace tollgate::router {
namespace {

namespace pb = ::tollgate::router::v1;

pb::ProviderType ToProto(ProviderType type) {
  switch (type) {
    case ProviderType::kOpenAi:
      return pb::PROVIDER_TYPE_OPENAI;
    case ProviderType::kAzureOpenAi:
      return pb::PROVIDER_TYPE_AZURE_OPENAI;
    case ProviderType::kOpenAiCompatible:
      return pb::PROVIDER_TYPE_OPENAI_COMPATIBLE;
    case ProviderType::kAnthropic:
      return pb::PROVIDER_TYPE_ANTHROPIC;
  }
  return pb::PROVIDER_TYPE_UNSPECIFIED;
}

std::optional<ProviderType> FromProto(pb::ProviderType type) {
  switch (type) {
    case pb::PROVIDER_TYPE_OPENAI:
      return ProviderType::kOpenAi;
    case pb::PROVIDER_TYPE_AZURE_OPENAI:
      return ProviderType::kAzureOpenAi;
    case pb::PROVIDER_TYPE_OPENAI_COMPATIBLE:
      return ProviderType::kOpenAiCompatible;
    case pb::PROVIDER_TYPE_ANTHROPIC:
      return ProviderType::kAnthropic;
    default:
      return std::nullopt;
  }
}

OutcomeKind FromProto(pb::OutcomeKind kind) {
  switch (kind) {
    case pb::OUTCOME_KIND_SUCCESS:
      return OutcomeKind::kSuccess;
    case pb::OUTCOME_KIND_CONNECT_ERROR:
      return OutcomeKind::kConnectError;
    case pb::OUTCOME_KIND_TIMEOUT:
      return OutcomeKind::kTimeout;
    case pb::OUTCOME_KIND_SERVER_ERROR:
      return OutcomeKind::kServerError;
    case pb::OUTCOME_KIND_RATE_LIMITED:
      return OutcomeKind::kRateLimited;
    case pb::OUTCOME_KIND_CLIENT_ERROR:
      return OutcomeKind::kClientError;
    case pb::OUTCOME_KIND_AUTH_ERROR:
      return OutcomeKind::kAuthError;
    default:
      return OutcomeKind::kUnspecified;
  }
}

pb::BreakerState ToProto(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return pb::BREAKER_STATE_CLOSED;
    case BreakerState::kOpen:
      return pb::BREAKER_STATE_OPEN;
    case BreakerState::kHalfOpen:
      return pb::BREAKER_STATE_HALF_OPEN;
  }
  return pb::BREAKER_STATE_UNSPECIFIED;
}

void Fill(const Provider& p, pb::Provider* out) {
  out->set_id(p.id);
  out->set_name(p.name);
  out->set_type(ToProto(p.type));
  out->set_base_url(p.base_url);
  out->set_api_version(p.api_version);
  out->set_enabled(p.enabled);
  out->set_created(p.created);
}

int64_t UnixMillisIn(std::chrono::milliseconds remaining) {
  if (remaining.count() <= 0) return 0;
  auto at = std::chrono::system_clock::now() + remaining;
  return std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
}

// Deliberately no secret field is filled: the listing carries none.
void Fill(const KeyListing& k, pb::UpstreamKey* out) {
  out->set_id(k.id);
  out->set_provider_id(k.provider_id);
  out->set_name(k.name);
  out->set_masked_key(k.masked_key);
  out->set_weight(k.weight);
  out->set_enabled(k.enabled);
  out->set_created(k.created);
  auto* h = out->mutable_health();
  h->set_state(ToProto(k.health.state));
  h->set_consecutive_failures(k.health.consecutive_failures);
  h->set_breaker_open_until_ms(UnixMillisIn(k.health.breaker_remaining));
  h->set_rate_limited_until_ms(UnixMillisIn(k.health.rate_limit_remaining));
  h->set_requests(k.health.requests);
  h->set_failures(k.health.failures);
  h->set_trial_in_flight(k.health.trial_in_flight);
  for (const auto& m : k.health.models) {
    auto* out_model = h->add_models();
    out_model->set_upstream_model(m.upstream_model);
    out_model->set_state(ToProto(m.state));
    out_model->set_consecutive_failures(m.consecutive_failures);
    out_model->set_breaker_open_until_ms(UnixMillisIn(m.breaker_remaining));
    out_model->set_rate_limited_until_ms(UnixMillisIn(m.rate_limit_remaining));
    out_model->set_requests(m.requests);
    out_model->set_failures(m.failures);
    out_model->set_trial_in_flight(m.trial_in_flight);
  }
}

void Fill(const ModelRecord& m, pb::Model* out) {
  out->set_id(m.name);
  out->set_created(m.created);
  out->set_owned_by(m.owned_by);
  out->set_max_output_tokens(m.max_output_tokens);
  out->set_default_max_tokens(m.default_max_tokens);
}

void Fill(const ModelRoute& r, pb::ModelRoute* out) {
  out->set_model(r.model);
  out->set_provider_id(r.provider_id);
  out->set_upstream_model(r.upstream_model);
}

// The client's model name goes back in the message; keep it to a sane length.
std::string Quoted(const std::string& model) {
  constexpr size_t kMax = 256;
  return model.size() <= kMax ? model : model.substr(0, kMax) + "...";
}

class RouterServiceImpl final : public pb::RouterService::CallbackService {
 public:
  RouterServiceImpl(KeyPool& pool, RouterMetrics& metrics, const CatalogueRefresher& refresher,
                    SecretOpener open)
      : pool_(pool), metrics_(metrics), refresher_(refresher), open_(std::move(open)) {}

  grpc::ServerUnaryReactor* GetRoutingTable(grpc::CallbackServerContext* context,
                                            const pb::GetRoutingTableRequest* request,
                                            pb::GetRoutingTableResponse* response) override {
    auto* reactor = context->DefaultReactor();
    CatalogueRefresher::Snapshot snapshot = refresher_.Current();
    if (!snapshot.catalogue) {
      reactor->Finish(ToGrpcStatus(ErrorCode::kServiceUnavailable, "catalogue not loaded yet"));
      return reactor;
    }
    response->set_version(snapshot.version);
    if (request->known_version() == snapshot.version) {
      response->set_unchanged(true);
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    const Catalogue& c = *snapshot.catalogue;
    for (const auto& p : c.providers) Fill(p, response->add_providers());
    for (const auto& k : c.keys) {
      auto* out = response->add_keys();
      out->set_id(k.id);
      out->set_provider_id(k.provider_id);
      out->set_nonce(k.secret.nonce);
      out->set_weight(k.weight);
      out->set_enabled(k.enabled);
      if (auto secret = open_(k)) {
        out->set_secret(std::move(*secret));
        out->set_usable(true);
      }
    }
    for (const auto& m : c.models) {
      auto* out = response->add_models();
      out->set_name(m.name);
      out->set_owned_by(m.owned_by);
      out->set_created(m.created);
      out->set_max_output_tokens(m.max_output_tokens);
      out->set_default_max_tokens(m.default_max_tokens);
    }
    for (const auto& r : c.routes) Fill(r, response->add_routes());
    for (const auto& a : c.aliases) {
      auto* out = response->add_aliases();
      out->set_alias(a.alias);
      out->set_model(a.model);
    }
    const KeyPoolOptions& o = pool_.options();
    auto* policy = response->mutable_policy();
    policy->set_failure_threshold(o.failure_threshold);
    policy->set_breaker_cooldown_ms(o.breaker_cooldown.count());
    policy->set_trial_timeout_ms(o.trial_timeout.count());
    policy->set_rate_limit_cooldown_ms(o.rate_limit_cooldown.count());
    policy->set_max_attempts(o.max_attempts);
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Route(grpc::CallbackServerContext* context,
                                  const pb::RouteRequest* request,
                                  pb::RouteResponse* response) override {
    auto* reactor = context->DefaultReactor();
    RouteResult result = pool_.Route(request->model(), std::max(0, request->max_attempts()));
    metrics_.CountRoute(result.status);
    switch (result.status) {
      case RouteResult::Status::kModelNotFound:
        reactor->Finish(ToGrpcStatus(ErrorCode::kModelNotFound,
                                     "The model `" + Quoted(request->model()) +
                                         "` does not exist or you do not have access to it."));
        return reactor;
      case RouteResult::Status::kNoHealthyUpstream:
      case RouteResult::Status::kNoRoute:
        reactor->Finish(ToGrpcStatus(ErrorCode::kNoHealthyUpstream,
                                     "No healthy upstream is available for the model `" +
                                         result.model + "`. Please retry shortly."));
        return reactor;
      case RouteResult::Status::kOk:
        break;
    }
    response->set_model(result.model);
    response->set_max_output_tokens(result.max_output_tokens);
    response->set_default_max_tokens(result.default_max_tokens);
    for (auto& a : result.attempts) {
      auto* out = response->add_attempts();
      out->set_upstream_key_id(a.key_id);
      out->set_provider_type(ToProto(a.provider_type));
      out->set_base_url(std::move(a.base_url));
      out->set_upstream_model(std::move(a.upstream_model));
      out->set_api_key(std::move(a.api_key));
      out->set_api_version(std::move(a.api_version));
      out->set_trial(a.trial);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ReportOutcomes(grpc::CallbackServerContext* context,
                                           const pb::ReportOutcomesRequest* request,
                                           pb::ReportOutcomesResponse*) override {
    auto* reactor = context->DefaultReactor();
    for (const auto& o : request->outcomes()) {
      Outcome outcome{o.upstream_key_id(), FromProto(o.kind()), o.retry_after_ms(),
                      o.upstream_model()};
      // Unknown ids (a key deleted meanwhile) and unknown kinds are dropped, not errors:
      // the edge must not retry a batch because of one stale entry.
      if (!pool_.Report(outcome)) continue;
      metrics_.CountAttempt(outcome.key_id, outcome.kind);
      if (auto health = pool_.Health(outcome.key_id)) metrics_.SetBreaker(*health);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const pb::ListModelsRequest*,
                                       pb::ListModelsResponse* response) override {
    auto* reactor = context->DefaultReactor();
    for (const auto& m : pool_.ListModels()) {
      auto* out = response->add_models();
      out->set_id(m.id);
      out->set_created(m.created);
      out->set_owned_by(m.owned_by);
    }
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  KeyPool& pool_;
  RouterMetrics& metrics_;
  const CatalogueRefresher& refresher_;
  SecretOpener open_;
};

class RouterAdminServiceImpl final : public pb::RouterAdminService::CallbackService {
 public:
  explicit RouterAdminServiceImpl(AdminServiceDeps deps) : deps_(std::move(deps)) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const pb::GetStatusRequest*,
                                      pb::GetStatusResponse* response) override {
    return RunStatusCall(context, [&] { deps_.status(response); });
  }

  grpc::ServerUnaryReactor* CreateProvider(grpc::CallbackServerContext* context,
                                           const pb::CreateProviderRequest* request,
                                           pb::CreateProviderResponse* response) override {
    return OnWorker(context, "CreateProvider", [=, this] {
      auto type = FromProto(request->type());
      if (!type)
        throw Error(ErrorCode::kInvalidRequest,
                    "type must be PROVIDER_TYPE_OPENAI, PROVIDER_TYPE_AZURE_OPENAI, "
                    "PROVIDER_TYPE_OPENAI_COMPATIBLE or PROVIDER_TYPE_ANTHROPIC");
      NewProvider p;
      p.name = request->name();
      p.type = *type;
      p.base_url = request->base_url();
      p.api_version = request->api_version();
      p.enabled = request->has_enabled() ? request->enabled() : true;
      Fill(deps_.admin.CreateProvider(std::move(p),
                                      Audit(*context, "create_provider", "", *request)),
           response->mutable_provider());
    });
  }

  grpc::ServerUnaryReactor* UpdateProvider(grpc::CallbackServerContext* context,
                                           const pb::UpdateProviderRequest* request,
                                           pb::UpdateProviderResponse* response) override {
    return OnWorker(context, "UpdateProvider", [=, this] {
      ProviderPatch patch;
      if (request->has_enabled()) patch.enabled = request->enabled();
      if (request->has_base_url()) patch.base_url = request->base_url();
      if (request->has_api_version()) patch.api_version = request->api_version();
      Fill(deps_.admin.UpdateProvider(request->id(), std::move(patch),
                                      Audit(*context, "update_provider",
                                            "provider:" + std::to_string(request->id()), *request)),
           response->mutable_provider());
    });
  }

  grpc::ServerUnaryReactor* ListProviders(grpc::CallbackServerContext* context,
                                          const pb::ListProvidersRequest*,
                                          pb::ListProvidersResponse* response) override {
    return OnWorker(context, "ListProviders", [=, this] {
      for (const auto& p : deps_.admin.ListProviders()) Fill(p, response->add_providers());
    });
  }

  grpc::ServerUnaryReactor* CreateUpstreamKey(grpc::CallbackServerContext* context,
                                              const pb::CreateUpstreamKeyRequest* request,
                                              pb::CreateUpstreamKeyResponse* response) override {
    return OnWorker(context, "CreateUpstreamKey", [=, this] {
      Fill(deps_.admin.CreateUpstreamKey(request->provider_id(), request->name(), request->secret(),
                                         request->weight(),
                                         request->has_enabled() ? request->enabled() : true,
                                         Audit(*context, "create_upstream_key", "", *request)),
           response->mutable_key());
    });
  }

  grpc::ServerUnaryReactor* UpdateUpstreamKey(grpc::CallbackServerContext* context,
                                              const pb::UpdateUpstreamKeyRequest* request,
                                              pb::UpdateUpstreamKeyResponse* response) override {
    return OnWorker(context, "UpdateUpstreamKey", [=, this] {
      std::optional<int32_t> weight;
      std::optional<bool> enabled;
      std::optional<std::string> secret;
      if (request->has_weight()) weight = request->weight();
      if (request->has_enabled()) enabled = request->enabled();
      if (request->has_secret()) secret = request->secret();
      Fill(deps_.admin.UpdateUpstreamKey(
               request->id(), weight, enabled, std::move(secret),
               Audit(*context, "update_upstream_key",
                     "upstream_key:" + std::to_string(request->id()), *request)),
           response->mutable_key());
    });
  }

  grpc::ServerUnaryReactor* DeleteUpstreamKey(grpc::CallbackServerContext* context,
                                              const pb::DeleteUpstreamKeyRequest* request,
                                              pb::DeleteUpstreamKeyResponse*) override {
    return OnWorker(context, "DeleteUpstreamKey", [=, this] {
      deps_.admin.DeleteUpstreamKey(
          request->id(), Audit(*context, "delete_upstream_key",
                               "upstream_key:" + std::to_string(request->id()), *request));
    });
  }

  grpc::ServerUnaryReactor* ListUpstreamKeys(grpc::CallbackServerContext* context,
                                             const pb::ListUpstreamKeysRequest* request,
                                             pb::ListUpstreamKeysResponse* response) override {
    return OnWorker(context, "ListUpstreamKeys", [=, this] {
      for (const auto& k : deps_.admin.ListUpstreamKeys(request->provider_id()))
        Fill(k, response->add_keys());
    });
  }

  grpc::ServerUnaryReactor* CreateModel(grpc::CallbackServerContext* context,
                                        const pb::CreateModelRequest* request,
                                        pb::CreateModelResponse* response) override {
    return OnWorker(context, "CreateModel", [=, this] {
      ModelRecord model;
      model.name = request->name();
      model.owned_by = request->owned_by();
      model.max_output_tokens = request->max_output_tokens();
      model.default_max_tokens = request->default_max_tokens();
      Fill(deps_.admin.CreateModel(std::move(model), Audit(*context, "create_model",
                                                           "model:" + request->name(), *request)),
           response->mutable_model());
    });
  }

  grpc::ServerUnaryReactor* SetModelLimits(grpc::CallbackServerContext* context,
                                           const pb::SetModelLimitsRequest* request,
                                           pb::SetModelLimitsResponse* response) override {
    return OnWorker(context, "SetModelLimits", [=, this] {
      Fill(deps_.admin.SetModelLimits(
               request->name(), request->max_output_tokens(), request->default_max_tokens(),
               Audit(*context, "set_model_limits", "model:" + request->name(), *request)),
           response->mutable_model());
    });
  }

  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const pb::DeleteModelRequest* request,
                                        pb::DeleteModelResponse*) override {
    return OnWorker(context, "DeleteModel", [=, this] {
      deps_.admin.DeleteModel(
          request->name(), Audit(*context, "delete_model", "model:" + request->name(), *request));
    });
  }

  grpc::ServerUnaryReactor* SetModelRoute(grpc::CallbackServerContext* context,
                                          const pb::SetModelRouteRequest* request,
                                          pb::SetModelRouteResponse* response) override {
    return OnWorker(context, "SetModelRoute", [=, this] {
      Fill(deps_.admin.SetModelRoute(
               {request->model(), request->provider_id(), request->upstream_model()},
               Audit(*context, "set_model_route",
                     RouteTarget(request->model(), request->provider_id()), *request)),
           response->mutable_route());
    });
  }

  grpc::ServerUnaryReactor* DeleteModelRoute(grpc::CallbackServerContext* context,
                                             const pb::DeleteModelRouteRequest* request,
                                             pb::DeleteModelRouteResponse*) override {
    return OnWorker(context, "DeleteModelRoute", [=, this] {
      deps_.admin.DeleteModelRoute(
          request->model(), request->provider_id(),
          Audit(*context, "delete_model_route",
                RouteTarget(request->model(), request->provider_id()), *request));
    });
  }

  grpc::ServerUnaryReactor* SetAlias(grpc::CallbackServerContext* context,
                                     const pb::SetAliasRequest* request,
                                     pb::SetAliasResponse*) override {
    return OnWorker(context, "SetAlias", [=, this] {
      deps_.admin.SetAlias(request->alias(), request->model(),
                           Audit(*context, "set_alias", "alias:" + request->alias(), *request));
    });
  }

  grpc::ServerUnaryReactor* DeleteAlias(grpc::CallbackServerContext* context,
                                        const pb::DeleteAliasRequest* request,
                                        pb::DeleteAliasResponse*) override {
    return OnWorker(context, "DeleteAlias", [=, this] {
      deps_.admin.DeleteAlias(
          request->alias(), Audit(*context, "delete_alias", "alias:" + request->alias(), *request));
    });
  }

  grpc::ServerUnaryReactor* ListCatalogue(grpc::CallbackServerContext* context,
                                          const pb::ListCatalogueRequest*,
                                          pb::ListCatalogueResponse* response) override {
    return OnWorker(context, "ListCatalogue", [=, this] {
      for (const auto& entry : deps_.admin.ListCatalogue().models) {
        auto* out = response->add_models();
        Fill(entry.model, out->mutable_model());
        for (const auto& r : entry.routes) Fill(r, out->add_routes());
        for (const auto& a : entry.aliases) out->add_aliases(a);
      }
    });
  }

  grpc::ServerUnaryReactor* ListAuditLog(grpc::CallbackServerContext* context,
                                         const pb::ListAuditLogRequest* request,
                                         pb::ListAuditLogResponse* response) override {
    return OnWorker(context, "ListAuditLog", [=, this] {
      for (const auto& e : deps_.admin.ListAuditLog(request->limit()))
        FillAuditEntry(e, response->add_entries());
    });
  }

 private:
  // The audit entry of one admin call (the secret of an upstream key is redacted from the
  // details by name; RouterAdmin adds the key's display prefix).
  static AuditEntry Audit(const grpc::CallbackServerContext& context, std::string action,
                          std::string target, const google::protobuf::Message& request) {
    return MakeAuditEntry(context, std::move(action), std::move(target), request);
  }

  static std::string RouteTarget(const std::string& model, int64_t provider_id) {
    return "route:" + model + "@provider:" + std::to_string(provider_id);
  }

  template <typename Work>
  grpc::ServerUnaryReactor* OnWorker(grpc::CallbackServerContext* context, const char* rpc,
                                     Work work) {
    return RunAdminCall(context, deps_.workers, "router", rpc, std::move(work));
  }

  AdminServiceDeps deps_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeRouterService(KeyPool& pool, RouterMetrics& metrics,
                                                 const CatalogueRefresher& refresher,
                                                 SecretOpener open) {
  return std::make_unique<RouterServiceImpl>(pool, metrics, refresher, std::move(open));
}

std::unique_ptr<grpc::Service> MakeRouterAdminService(AdminServiceDeps deps) {
  return std::make_unique<RouterAdminServiceImpl>(std::move(deps));
}

}  // namespace tollgate::router
