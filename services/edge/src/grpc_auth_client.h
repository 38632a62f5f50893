// AuthClient over gRPC (tollgate.auth.v1.AuthService) with a local cache of principals
// (key hash → principal), so a warm request makes no round-trip: the edge decides it itself with
// the same policy code the auth service uses (status, expiry, user, client IP).
//
// Freshness: a WatchKeys stream pushes every change (revoke, disable, expiry, allowlists) as it
// happens, so while it is up the cache is exact within the push latency (measured well under a
// second on one host; see services/auth/test). When the stream is down, a cached principal is
// trusted for `cache_ttl` after it was last confirmed and then confirmed again with Authenticate;
// the stream reconnects with backoff and, on reconnecting, has every cached key re-answered.
// When auth is unreachable, cached principals keep working (up to `max_stale` past their TTL)
// and unknown keys get 503. Misses are single-flight per key.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "src/clients.h"

namespace tollgate::edge {

struct GrpcAuthClientOptions {
  std::string target = "127.0.0.1:7101";
  std::chrono::milliseconds timeout{2000};  // deadline of every unary call
  std::chrono::milliseconds cache_ttl{30000};
  std::chrono::milliseconds negative_ttl{2000};
  size_t max_entries = 100000;
  std::chrono::milliseconds max_stale{3600000};
  std::chrono::milliseconds watch_idle_timeout{15000};
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{5000};
  std::chrono::milliseconds usage_flush_interval{5000};
  // Wall clock for key expiry (tests move it); empty: the system's.
  std::function<std::chrono::system_clock::time_point()> wall_clock;
};

class GrpcAuthClient final : public AuthClient {
 public:
  explicit GrpcAuthClient(GrpcAuthClientOptions options);
  ~GrpcAuthClient() override;  // Shutdown()

  // Stops watching, cancels the calls in flight and waits for their callbacks, reports the last
  // key usage. Calls made afterwards are answered from the cache or fail (inline). Idempotent.
  void Shutdown();

  void Authenticate(std::string api_key, std::string client_ip,
                    std::function<void(AuthResult)> done) override;

  // True while the WatchKeys stream is up and has answered the keys held when it started.
  bool watch_synced() const;
  int64_t remote_calls() const;  // Authenticate RPCs made (cache misses and confirmations)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
