// Who the client is when the edge sits behind proxies (edge.trusted_proxies): pure logic, no I/O.
//
// Only a connection whose peer (the socket's address) is inside a trusted network may name the
// client; any other peer is the client, whatever its headers say (they could be spoofed).
// From a trusted peer the edge reads RFC 7239 `Forwarded` (its `for=` parameters) when the request
// has any Forwarded header, else `X-Forwarded-For`; several lines of the header are one list, in
// order. The list is walked from the right (the entry the nearest proxy appended), skipping
// entries that are trusted proxies themselves: the first untrusted address is the client. When
// every entry is trusted, the leftmost one is. A malformed entry (garbage, `unknown`, an
// obfuscated node, a Forwarded element without `for=`) stops the walk: the client is then the last
// address reached (the peer, or the nearest trusted hop), never something further left, which
// anyone could have written. Entries may carry ports ("192.0.2.7:4711", "[2001:db8::1]:4711",
// quoted in Forwarded); the address is returned in one canonical spelling ("2001:db8::1"), so a
// per-IP limit cannot be dodged by writing it differently.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "src/http.h"
#include "tollgate/auth/policy.h"

namespace tollgate::edge {

class TrustedProxies {
 public:
  TrustedProxies() = default;
  // Parses networks ("10.0.0.0/8", "2001:db8::/32", or one address); throws ConfigError naming
  // `key` and the bad entry.
  static TrustedProxies Parse(const std::vector<std::string>& cidrs,
                              std::string_view key = "edge.trusted_proxies");

  bool empty() const { return networks_.empty(); }
  bool Contains(const auth::IpAddress& ip) const;

 private:
  std::vector<auth::Cidr> networks_;
};

// The client's address for a request that came from `peer` with `headers` (lower-case names).
std::string ClientIp(const std::string& peer, const HttpHeaders& headers,
                     const TrustedProxies& trusted);

// One entry of X-Forwarded-For or one `for=` value of Forwarded, unquoted: "192.0.2.7",
// "192.0.2.7:4711", "2001:db8::1", "[2001:db8::1]:4711". Anything else (including "unknown" and
// obfuscated identifiers) is nullopt.
std::optional<auth::IpAddress> ParseNodeAddress(std::string_view text);

}  // namespace tollgate::edge
