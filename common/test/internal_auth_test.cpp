#include "tollgate/internal_auth.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace tollgate {
namespace {

TEST(InternalAuthTest, VerdictsFollowTheTable) {
  const std::string table = "/tollgate.router.v1.RouterService/GetRoutingTable";
  EXPECT_EQ(Authorize(table, {}), Verdict::kUnauthenticated);
  EXPECT_EQ(Authorize(table, {Identity::kAdmin}), Verdict::kPermissionDenied);
  EXPECT_EQ(Authorize(table, {Identity::kEdge}), Verdict::kAllow);
  EXPECT_EQ(Authorize(table, {Identity::kEdge, Identity::kAdmin}), Verdict::kAllow);

  const std::string admin = "/tollgate.router.v1.RouterAdminService/ListUpstreamKeys";
  EXPECT_EQ(Authorize(admin, {}), Verdict::kUnauthenticated);
  EXPECT_EQ(Authorize(admin, {Identity::kEdge}), Verdict::kPermissionDenied);
  EXPECT_EQ(Authorize(admin, {Identity::kAdmin}), Verdict::kAllow);

  // Health needs nothing; reflection is the admin's.
  EXPECT_EQ(Authorize("/grpc.health.v1.Health/Check", {}), Verdict::kAllow);
  EXPECT_EQ(Authorize("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                      {Identity::kEdge}),
            Verdict::kPermissionDenied);
}

TEST(InternalAuthTest, AMethodNotInTheTableIsRefusedToEveryone) {
  const std::string unknown = "/tollgate.router.v1.RouterService/DumpSecrets";
  EXPECT_EQ(Authorize(unknown, {}), Verdict::kUnauthenticated);
  EXPECT_EQ(Authorize(unknown, {Identity::kEdge, Identity::kAdmin}), Verdict::kPermissionDenied);
  EXPECT_EQ(Authorize("", {Identity::kEdge}), Verdict::kPermissionDenied);
  // Exact names only: no prefix or case games.
  EXPECT_EQ(Authorize("/tollgate.router.v1.RouterService/Route/x", {Identity::kEdge}),
            Verdict::kPermissionDenied);
  EXPECT_EQ(Authorize("/tollgate.router.v1.routerservice/Route", {Identity::kEdge}),
            Verdict::kPermissionDenied);
}

TEST(InternalAuthTest, EveryRuleNamesOneMethodOnceAndSomebody) {
  std::set<std::string_view> seen;
  for (const MethodRule& rule : InternalAuthTable()) {
    EXPECT_TRUE(seen.insert(rule.method).second) << "twice: " << rule.method;
    EXPECT_EQ(rule.method.front(), '/') << rule.method;
    EXPECT_NE(rule.method.find('/', 1), std::string_view::npos) << rule.method;
    EXPECT_TRUE(rule.anyone || !rule.allowed.empty()) << "nobody may call " << rule.method;
    // Upstream secrets and the data path are never open, and no method is both edge's and admin's.
    if (rule.method.find("/tollgate.") == 0) EXPECT_FALSE(rule.anyone) << rule.method;
    EXPECT_FALSE(rule.allowed.Has(Identity::kEdge) && rule.allowed.Has(Identity::kAdmin))
        << rule.method;
  }
}

TEST(InternalAuthTest, IdentitiesComeFromTollgateUris) {
  EXPECT_EQ(IdentityFromUri("tollgate://edge"), Identity::kEdge);
  EXPECT_EQ(IdentityFromUri("tollgate://admin"), Identity::kAdmin);
  EXPECT_EQ(IdentityFromUri("tollgate://router"), std::nullopt);
  EXPECT_EQ(IdentityFromUri("tollgate://edge/"), std::nullopt);
  EXPECT_EQ(IdentityFromUri("spiffe://tollgate/edge"), std::nullopt);
  EXPECT_EQ(IdentityFromUri("edge"), std::nullopt);
  EXPECT_EQ(IdentityFromUri("edge.tollgate.internal"), std::nullopt);
}

TEST(InternalAuthTest, IdentitiesComeFromUriOrTollgateInternalDnsSans) {
  EXPECT_EQ(IdentityFromSan("tollgate://edge"), Identity::kEdge);
  EXPECT_EQ(IdentityFromSan("tollgate://admin"), Identity::kAdmin);
  EXPECT_EQ(IdentityFromSan("edge.tollgate.internal"), Identity::kEdge);
  EXPECT_EQ(IdentityFromSan("admin.tollgate.internal"), Identity::kAdmin);
  EXPECT_EQ(IdentityFromSan("router.tollgate.internal"), std::nullopt);
  EXPECT_EQ(IdentityFromSan("edge.tollgate.internal."), std::nullopt);
  EXPECT_EQ(IdentityFromSan("x.edge.tollgate.internal"), std::nullopt);
  EXPECT_EQ(IdentityFromSan("*.tollgate.internal"), std::nullopt);
  EXPECT_EQ(IdentityFromSan("tollgate-edge.ns.svc"), std::nullopt);
}

}  // namespace
}  // namespace tollgate
