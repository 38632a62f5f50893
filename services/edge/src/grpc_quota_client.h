// QuotaClient over gRPC (tollgate.quota.v1.QuotaService) to subject-sharded quota replicas.
//
// Every limited subject (API key, user, client IP) has exactly one owner among the ordered
// replica list: replicas[QuotaOwner(kind, subject, N)]. Admit sends each owner only its own
// subjects, in parallel; if any part is denied (or fails while failing closed) the granted parts
// are released, so the limits stay exact across replicas (they can briefly under-admit, never
// over-admit). The reservation id handed to the request path names every part ("i:id,j:id").
// Settle is queued per replica and sent in batches by a background flusher, off the request path,
// and retried until acknowledged; with a journal (journal_dir) it is also written to disk first,
// so the settlements of a killed edge are sent by its next start.
//
// Leases (`leases`, on by default): a request whose every subject holds a usable lease (capacity
// its owner granted this edge in advance: requests and worst-case tokens, until a deadline) is
// admitted from memory, without a call. Otherwise it is admitted by the replicas as above, and the
// lease loop asks for leases of its subjects. The loop (one Lease call per replica every
// `lease_interval`, asks and returns batched) renews leases that run low or near their deadline,
// returns what idle or replaced leases did not use, and drops every lease of a replica that fails
// or restarted. A lease is used only until the time the call that got it was sent + its ttl, so
// never after the replica's own deadline. Close to a limit the replica grants none: those
// requests are decided one at a time by the replica, exactly as without leases. A part admitted
// from a lease is named "<i>:<k|u|i|j><lease id>.<estimate>" in the reservation id; its Settle
// (one per replica, "l1+l2" naming that replica's leases and exactly their subjects) moves the
// estimate from each lease to the settled total on the replica.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "src/clients.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace tollgate::edge {

struct GrpcQuotaClientOptions {
  std::vector<std::string> targets = {"127.0.0.1:7102"};  // ordered: ordinal i at [i]
  std::chrono::milliseconds timeout{2000};                // deadline of every call
  // When a quota replica cannot be reached: false (the default) answers 503, true admits the
  // request unlimited. Either way it is logged and counted.
  bool fail_open = false;
  std::chrono::milliseconds flush_interval{50};
  size_t batch_size = 256;
  size_t max_queued = 100000;  // per replica; beyond this the oldest settlements are dropped
  // Where settlements also wait on disk until quota acknowledged them (a Spool, spool.h: written
  // as Settle is called, fsynced every flush interval), so the settlements of an edge killed
  // before it sent them are sent by its next start (Settle is idempotent). Empty: memory only.
  std::string journal_dir;
  bool leases = true;
  std::chrono::milliseconds lease_interval{10};
  prometheus::Registry* registry = nullptr;
};

// The owner ordinal of a subject ("key", "user", "ip") among `replicas`: FNV-1a 64 of
// "kind:subject", modulo the count. Stable across processes and builds.
size_t QuotaOwner(std::string_view kind, std::string_view subject, size_t replicas);

class GrpcQuotaClient final : public QuotaClient {
 public:
  explicit GrpcQuotaClient(GrpcQuotaClientOptions options);
  ~GrpcQuotaClient() override;  // Shutdown()

  // Sends what is still queued (each batch bounded by its deadline), cancels the calls in
  // flight and waits for their callbacks. Calls made afterwards are answered at once as if
  // quota were unreachable (fail open or closed). Idempotent.
  void Shutdown();

  void Admit(AdmitRequest request, std::function<void(AdmitResult)> done) override;
  void Release(std::string reservation_id) override;
  void Settle(const UsageRecord& record) override;

  int64_t settlements_sent() const;
  int64_t settlements_dropped() const;
  int64_t unavailable() const;  // Admits that met an unreachable replica
  int64_t admitted_from_leases() const;
  size_t live_leases() const;

  // Tests only: stops every background call at once, as if the process were killed (leases are
  // not returned, queued settlements never sent).
  void SimulateCrashForTest();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
