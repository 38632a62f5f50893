// Internal trust: who may call which gRPC method of the services. One table (internal_auth.cpp)
// maps every fully-qualified method to the caller identities allowed to call it; the gRPC server
// bootstrap (grpc_server.cpp) establishes the caller's identities from its credentials (a
// certificate's URI SAN `tollgate://<identity>`, or a token in `authorization: Bearer`) and asks
// Authorize() before the call reaches any handler. Pure logic: no gRPC, no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace tollgate {

// Caller identities. No service calls another, so the services need none of their own.
enum class Identity : uint8_t {
  kEdge = 1 << 0,   // the edge: the data-path RPCs it uses
  kAdmin = 1 << 1,  // tollgatectl / the admin token: the admin services
};

// A set of identities (bits of Identity).
class IdentitySet final {
 public:
  constexpr IdentitySet() = default;
  constexpr IdentitySet(std::initializer_list<Identity> ids) {
    for (Identity id : ids) Add(id);
  }
  constexpr void Add(Identity id) { bits_ |= static_cast<uint8_t>(id); }
  constexpr bool Has(Identity id) const { return (bits_ & static_cast<uint8_t>(id)) != 0; }
  constexpr bool Intersects(IdentitySet other) const { return (bits_ & other.bits_) != 0; }
  constexpr bool empty() const { return bits_ == 0; }

 private:
  uint8_t bits_ = 0;
};

std::string_view IdentityName(Identity id);
// "tollgate://edge" → kEdge; anything else → nullopt.
std::optional<Identity> IdentityFromUri(std::string_view uri);
// A certificate's subject alternative name: the URI form above, or the DNS form
// "edge.tollgate.internal" (Helm's genSignedCert can only write DNS SANs; `.internal` is
// reserved for private use, so no public CA issues it). Anything else → nullopt.
std::optional<Identity> IdentityFromSan(std::string_view san);

struct MethodRule {
  std::string_view method;  // "/tollgate.router.v1.RouterService/GetRoutingTable"
  bool anyone;              // no credential needed (health: probes carry none)
  IdentitySet allowed;
};

// The table, for tests and docs.
std::span<const MethodRule> InternalAuthTable();
const MethodRule* FindMethodRule(std::string_view method);

enum class Verdict { kAllow, kUnauthenticated, kPermissionDenied };

// `callers`: the identities the call's credentials established (empty: none). A method open to
// anyone is allowed; otherwise no identity is UNAUTHENTICATED, and an identity the table does not
// list for the method (or a method not in the table) is PERMISSION_DENIED.
Verdict Authorize(std::string_view method, IdentitySet callers);

}  // namespace tollgate
