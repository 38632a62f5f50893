// Wires the edge: the OpenAI-compatible HTTP surface and its auth, quota, router and billing
// clients.
#include "tollgate/edge/module.h"

#include "src/client_ip.h"
#include "src/grpc_auth_client.h"
#include "src/grpc_billing_client.h"
#include "src/grpc_quota_client.h"
#include "src/grpc_router_client.h"
#include "src/http_server.h"
#include "src/local_router.h"
#include "src/proxy.h"
#include "src/responses_format.h"
#include "tollgate/config.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"

#include <openssl/rand.h>

namespace tollgate::edge {
namespace {

// edge.passthrough.allowed_prefixes, each a path under /v1/ (the catch-all's paths).
std::vector<std::string> PassthroughPrefixes(const Config& config) {
  auto prefixes = config.GetList("edge.passthrough.allowed_prefixes");
  for (const auto& prefix : prefixes)
    if (!prefix.starts_with("/v1/"))
      throw ConfigError("edge.passthrough.allowed_prefixes: '" + prefix +
                        "' does not start with /v1/");
  return prefixes;
}

// The key of the sealed Responses API ids: every edge must hold the same one, or an id made by
// one edge is unknown at the next.
std::string ResponseIdSecret(const Config& config) {
  std::string secret = config.GetString("edge.response_id_secret");
  if (!secret.empty()) {
    if (auto bad = ResponseIdSecretProblem(secret)) throw ConfigError(*bad);
    return secret;
  }
  if (std::string token = config.GetString("grpc.service_tokens.edge"); !token.empty())
    return DeriveResponseIdSecret(token);
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw ConfigError("no randomness for response ids");
  // Right for --target=all (one edge); a second edge would not know this edge's ids.
  log::Info("edge",
            "neither edge.response_id_secret nor grpc.service_tokens.edge is set: Responses API "
            "ids are valid at this edge process only (set edge.response_id_secret when running "
            "more than one edge)");
  return std::string(reinterpret_cast<const char*>(bytes), sizeof bytes);
}

class EdgeModule final : public Module {
 public:
  explicit EdgeModule(const ModuleDeps& deps) : deps_(deps) {}

  std::string name() const override { return "edge"; }

  void Start() override {
    const Config& config = deps_.config;
    // Checked before anything starts: a bad policy stops the edge with the key named.
    FieldPolicyOptions fields;
    fields.strip_fields = config.GetList("edge.strip_fields");
    fields.reject_fields = config.GetList("edge.reject_fields");
    fields.allowed_service_tiers = config.GetList("edge.allowed_service_tiers");
    if (auto bad = FieldPolicy::Check(fields)) throw ConfigError(*bad);
    GrpcRouterClientOptions router;
    router.target = config.GetString("edge.router_target");
    router.timeout = config.GetDuration("edge.grpc_timeout");
    router.flush_interval = config.GetDuration("edge.outcome_flush_interval");
    router.batch_size = static_cast<size_t>(config.GetInt("edge.outcome_batch_size"));
    router.stale_plan_ttl = config.GetDuration("edge.router_stale_plan_ttl");
    router_ = std::make_unique<GrpcRouterClient>(router);
    if (config.GetBool("edge.local_routing")) {
      LocalRouterOptions local;
      local.target = router.target;
      local.refresh = config.GetDuration("edge.routing_refresh");
      local.timeout = router.timeout;
      local.max_staleness = router.stale_plan_ttl;
      local_router_ = std::make_unique<LocalRouterClient>(local, *router_);
    }
    RouterClient& routing = local_router_ ? static_cast<RouterClient&>(*local_router_) : *router_;

    GrpcAuthClientOptions auth;
    auth.target = config.GetString("edge.auth_target");
    auth.timeout = config.GetDuration("edge.grpc_timeout");
    auth.cache_ttl = config.GetDuration("edge.auth_cache_ttl");
    auth.negative_ttl = config.GetDuration("edge.auth_negative_cache_ttl");
    auth.max_entries = static_cast<size_t>(config.GetInt("edge.auth_cache_max_entries"));
    auth.max_stale = config.GetDuration("edge.auth_max_stale");
    auth.watch_idle_timeout = config.GetDuration("edge.auth_watch_idle_timeout");
    auth.backoff_max = config.GetDuration("edge.auth_watch_backoff_max");
    auth.usage_flush_interval = config.GetDuration("edge.auth_usage_flush_interval");
    auth_ = std::make_unique<GrpcAuthClient>(auth);

    GrpcQuotaClientOptions quota;
    quota.targets = config.GetList("edge.quota_targets");
    quota.timeout = config.GetDuration("edge.grpc_timeout");
    quota.fail_open = config.GetBool("edge.quota_fail_open");
    quota.leases = config.GetBool("edge.quota_leases");
    quota.lease_interval = config.GetDuration("edge.quota_lease_interval");
    quota.registry = &deps_.metrics.registry();
    quota.journal_dir = config.GetString("edge.spool_dir") + "/quota";
    quota_ = std::make_unique<GrpcQuotaClient>(quota);
    GrpcBillingClientOptions billing;
    billing.target = config.GetString("edge.billing_target");
    billing.timeout = config.GetDuration("edge.grpc_timeout");
    billing.spool_dir = config.GetString("edge.spool_dir");
    billing.spool_max_bytes = static_cast<uint64_t>(config.GetInt("edge.spool_max_bytes"));
    billing.budgets = config.GetBool("edge.billing_budgets");
    billing.budget_interval = config.GetDuration("edge.billing_budget_interval");
    billing.registry = &deps_.metrics.registry();
    billing_ = std::make_unique<GrpcBillingClient>(billing);

    ProxyOptions proxy;
    proxy.max_attempts = static_cast<int32_t>(config.GetInt("edge.max_attempts"));
    proxy.default_max_tokens = config.GetInt("edge.quota_default_max_tokens");
    proxy.store_bodies_max_bytes =
        static_cast<size_t>(config.GetInt("edge.store_bodies_max_bytes"));
    proxy.fields = std::move(fields);
    proxy.upstream.connect = config.GetDuration("edge.upstream.connect_timeout");
    proxy.upstream.first_byte = config.GetDuration("edge.upstream.first_byte_timeout");
    proxy.upstream.idle = config.GetDuration("edge.upstream.idle_timeout");
    proxy.upstream.total = config.GetDuration("edge.upstream.total_timeout");
    proxy.pool.keepalive = config.GetDuration("edge.upstream.pool_idle_timeout");
    proxy.pool.max_idle_per_host =
        static_cast<size_t>(config.GetInt("edge.upstream.pool_max_idle_per_host"));
    proxy.pool.ca_file = config.GetString("edge.upstream.ca_file");
    proxy.passthrough.enabled = config.GetBool("edge.passthrough.enabled");
    proxy.passthrough.allowed_prefixes = PassthroughPrefixes(config);
    proxy.passthrough.default_model = config.GetString("edge.passthrough.default_model");
    proxy.passthrough.max_json_body_bytes =
        static_cast<uint64_t>(config.GetInt("edge.max_body_bytes"));
    proxy.passthrough.hold_micros = config.GetInt("edge.passthrough.hold_micros");
    proxy.response_id_secret = ResponseIdSecret(config);
    proxy.upload_spill_dir = billing.spool_dir + "/uploads";
    proxy.max_upload_bytes = static_cast<uint64_t>(config.GetInt("edge.max_upload_bytes"));

    HttpServerOptions options;
    options.listen = config.GetString("edge.listen");
    options.threads = static_cast<int>(config.GetInt("edge.threads"));
    options.max_body_bytes = static_cast<uint64_t>(config.GetInt("edge.max_body_bytes"));
    options.max_header_bytes = static_cast<uint32_t>(config.GetInt("edge.max_header_bytes"));
    options.max_upload_bytes = static_cast<uint64_t>(config.GetInt("edge.max_upload_bytes"));
    options.trusted_proxies = TrustedProxies::Parse(config.GetList("edge.trusted_proxies"));
    options.idle_timeout = config.GetDuration("edge.client_idle_timeout");
    options.read_timeout = config.GetDuration("edge.client_read_timeout");
    options.write_timeout = config.GetDuration("edge.client_write_timeout");
    server_ = std::make_unique<HttpServer>(
        options, deps_.metrics.registry(),
        MakeProxyHandlers(proxy, EdgeClients{*auth_, *quota_, routing, *billing_},
                          deps_.metrics.registry()));
    server_->Start();
    auto host = options.listen.substr(0, options.listen.rfind(':'));
    log::Info("edge", "serving HTTP",
              {{"listen", host + ":" + std::to_string(server_->port())},
               {"router_target", router.target},
               {"auth_target", auth.target},
               {"billing_target", billing.target},
               {"spool_dir", billing.spool_dir}});
  }

  void BeginShutdown() override {
    if (server_) server_->StopAccepting();
  }

  void Shutdown(std::chrono::system_clock::time_point deadline) override {
    if (!server_) return;
    auto left = deadline - std::chrono::system_clock::now();
    server_->Drain(std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(left));
    // The clients' callbacks post to the server's executors: finish them while those run.
    if (local_router_) local_router_->Stop();
    router_->Shutdown();
    quota_->Shutdown();
    billing_->Shutdown();
    auth_->Shutdown();
    server_->Shutdown(std::chrono::steady_clock::now());
    server_.reset();
    local_router_.reset();
    router_.reset();
    quota_.reset();
    billing_.reset();
    auth_.reset();
  }

 private:
  ModuleDeps deps_;
  std::unique_ptr<GrpcRouterClient> router_;
  std::unique_ptr<LocalRouterClient> local_router_;  // plans in the edge; router_ as fallback
  std::unique_ptr<GrpcAuthClient> auth_;
  std::unique_ptr<GrpcQuotaClient> quota_;
  std::unique_ptr<GrpcBillingClient> billing_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace

void CheckEdgeConfig(const Config& config) {
  TrustedProxies::Parse(config.GetList("edge.trusted_proxies"));
  PassthroughPrefixes(config);
}

std::unique_ptr<Module> MakeEdgeModule(const ModuleDeps& deps) {
  return std::make_unique<EdgeModule>(deps);
}

}  // namespace tollgate::edge
