// The one authorisation table of internal gRPC calls (see internal_auth.h and the "Trust" section
// of docs/architecture.md). A method that is not listed is refused to everybody, so a new RPC is
// unreachable until it is added here (process_test's InternalTrustTest fails until then).
#include "tollgate/internal_auth.h"

#include <array>

namespace tollgate {
namespace {

constexpr IdentitySet kEdge{Identity::kEdge};
constexpr IdentitySet kAdmin{Identity::kAdmin};

constexpr MethodRule Open(std::string_view method) { return {method, true, {}}; }
constexpr MethodRule Edge(std::string_view method) { return {method, false, kEdge}; }
constexpr MethodRule Admin(std::string_view method) { return {method, false, kAdmin}; }

constexpr auto kTable = std::to_array<MethodRule>({
    // Health: anyone. A probe (kubelet, `tollgate health`, compose) carries no credential, and
    // the answer (SERVING or not) reveals nothing.
    Open("/grpc.health.v1.Health/Check"),
    Open("/grpc.health.v1.Health/Watch"),
    // Reflection: the admin only. The API is public in proto/, but nobody else needs a map of
    // the ports; `grpcurl -H 'authorization: Bearer <admin token>'` still works for operators.
    Admin("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
    Admin("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),

    // auth: the edge's principal lookups, its key watch and last-used reports.
    Edge("/tollgate.auth.v1.AuthService/Authenticate"),
    Edge("/tollgate.auth.v1.AuthService/WatchKeys"),
    Edge("/tollgate.auth.v1.AuthService/ReportKeyUsage"),
    Admin("/tollgate.auth.v1.AuthAdminService/GetStatus"),
    Admin("/tollgate.auth.v1.AuthAdminService/CreateUser"),
    Admin("/tollgate.auth.v1.AuthAdminService/UpdateUser"),
    Admin("/tollgate.auth.v1.AuthAdminService/ListUsers"),
    Admin("/tollgate.auth.v1.AuthAdminService/CreateApiKey"),
    Admin("/tollgate.auth.v1.AuthAdminService/ListApiKeys"),
    Admin("/tollgate.auth.v1.AuthAdminService/UpdateApiKey"),
    Admin("/tollgate.auth.v1.AuthAdminService/RevokeApiKey"),
    Admin("/tollgate.auth.v1.AuthAdminService/ListAuditLog"),

    // quota: admission and its settlement.
    Edge("/tollgate.quota.v1.QuotaService/Admit"),
    Edge("/tollgate.quota.v1.QuotaService/Settle"),
    Edge("/tollgate.quota.v1.QuotaService/Release"),
    Edge("/tollgate.quota.v1.QuotaService/Lease"),
    Admin("/tollgate.quota.v1.QuotaAdminService/GetStatus"),
    Admin("/tollgate.quota.v1.QuotaAdminService/SetPolicy"),
    Admin("/tollgate.quota.v1.QuotaAdminService/GetPolicy"),
    Admin("/tollgate.quota.v1.QuotaAdminService/DeletePolicy"),
    Admin("/tollgate.quota.v1.QuotaAdminService/GetUsage"),
    Admin("/tollgate.quota.v1.QuotaAdminService/ListAuditLog"),

    // router: Route and GetRoutingTable answer upstream secrets: the edge only.
    Edge("/tollgate.router.v1.RouterService/Route"),
    Edge("/tollgate.router.v1.RouterService/ReportOutcomes"),
    Edge("/tollgate.router.v1.RouterService/ListModels"),
    Edge("/tollgate.router.v1.RouterService/GetRoutingTable"),
    Admin("/tollgate.router.v1.RouterAdminService/GetStatus"),
    Admin("/tollgate.router.v1.RouterAdminService/CreateProvider"),
    Admin("/tollgate.router.v1.RouterAdminService/UpdateProvider"),
    Admin("/tollgate.router.v1.RouterAdminService/ListProviders"),
    Admin("/tollgate.router.v1.RouterAdminService/CreateUpstreamKey"),
    Admin("/tollgate.router.v1.RouterAdminService/UpdateUpstreamKey"),
    Admin("/tollgate.router.v1.RouterAdminService/DeleteUpstreamKey"),
    Admin("/tollgate.router.v1.RouterAdminService/ListUpstreamKeys"),
    Admin("/tollgate.router.v1.RouterAdminService/CreateModel"),
    Admin("/tollgate.router.v1.RouterAdminService/SetModelLimits"),
    Admin("/tollgate.router.v1.RouterAdminService/DeleteModel"),
    Admin("/tollgate.router.v1.RouterAdminService/SetModelRoute"),
    Admin("/tollgate.router.v1.RouterAdminService/DeleteModelRoute"),
    Admin("/tollgate.router.v1.RouterAdminService/SetAlias"),
    Admin("/tollgate.router.v1.RouterAdminService/DeleteAlias"),
    Admin("/tollgate.router.v1.RouterAdminService/ListCatalogue"),
    Admin("/tollgate.router.v1.RouterAdminService/ListAuditLog"),

    // billing: holds and records on the request path, the caller's own usage for /v1/usage.
    Edge("/tollgate.billing.v1.BillingService/Hold"),
    Edge("/tollgate.billing.v1.BillingService/ReleaseHold"),
    Edge("/tollgate.billing.v1.BillingService/RecordUsage"),
    Edge("/tollgate.billing.v1.BillingService/GetAccount"),
    Edge("/tollgate.billing.v1.BillingService/GetUsage"),
    Edge("/tollgate.billing.v1.BillingService/Budget"),
    Admin("/tollgate.billing.v1.BillingAdminService/GetStatus"),
    Admin("/tollgate.billing.v1.BillingAdminService/SetPrice"),
    Admin("/tollgate.billing.v1.BillingAdminService/ListPrices"),
    Admin("/tollgate.billing.v1.BillingAdminService/SetMultiplier"),
    Admin("/tollgate.billing.v1.BillingAdminService/SetServiceTierMultiplier"),
    Admin("/tollgate.billing.v1.BillingAdminService/ListServiceTierMultipliers"),
    Admin("/tollgate.billing.v1.BillingAdminService/CreateAccount"),
    Admin("/tollgate.billing.v1.BillingAdminService/TopUp"),
    Admin("/tollgate.billing.v1.BillingAdminService/SetCreditLimit"),
    Admin("/tollgate.billing.v1.BillingAdminService/GetBalance"),
    Admin("/tollgate.billing.v1.BillingAdminService/UsageReport"),
    Admin("/tollgate.billing.v1.BillingAdminService/ListUsageRecords"),
    Admin("/tollgate.billing.v1.BillingAdminService/ListAuditLog"),
});

}  // namespace

std::string_view IdentityName(Identity id) {
  switch (id) {
    case Identity::kEdge:
      return "edge";
    case Identity::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<Identity> IdentityFromUri(std::string_view uri) {
  if (uri == "tollgate://edge") return Identity::kEdge;
  if (uri == "tollgate://admin") return Identity::kAdmin;
  return std::nullopt;
}

std::optional<Identity> IdentityFromSan(std::string_view san) {
  if (san == "edge.tollgate.internal") return Identity::kEdge;
  if (san == "admin.tollgate.internal") return Identity::kAdmin;
  return IdentityFromUri(san);
}

std::span<const MethodRule> InternalAuthTable() { return kTable; }

const MethodRule* FindMethodRule(std::string_view method) {
  for (const MethodRule& rule : kTable)
    if (rule.method == method) return &rule;
  return nullptr;
}

Verdict Authorize(std::string_view method, IdentitySet callers) {
  const MethodRule* rule = FindMethodRule(method);
  if (rule != nullptr && rule->anyone) return Verdict::kAllow;
  if (callers.empty()) return Verdict::kUnauthenticated;
  if (rule == nullptr || !rule->allowed.Intersects(callers)) return Verdict::kPermissionDenied;
  return Verdict::kAllow;
}

}  // namespace tollgate
