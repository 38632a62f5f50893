#include "src/grpc_quota_client.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "src/grpc_call.h"
#include "src/spool.h"
#include "tollgate/log.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"
#include "tollgate/saturating.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::quota::v1;

RateLimitWindow FromProto(const pb::RateLimitWindow& w) {
  return {w.limit(), w.remaining(), w.reset_ms()};
}

// The tighter of two windows: fewer units left (an unlimited one never wins).
void Tighten(RateLimitWindow& into, const RateLimitWindow& w) {
  if (w.limit == 0) return;
  if (into.limit == 0 || w.remaining < into.remaining) into = w;
}

// "0:r1f..,1:r2e.." <-> [(0, "r1f.."), (1, "r2e..")]
std::vector<std::pair<size_t, std::string>> ParseReservation(const std::string& text,
                                                             size_t replicas) {
  std::vector<std::pair<size_t, std::string>> out;
  out.reserve(static_cast<size_t>(std::count(text.begin(), text.end(), ',')) + 1);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view part(text.data() + pos, end - pos);
    size_t colon = part.find(':');
    if (colon != std::string_view::npos && colon > 0) {
      size_t index = 0;
      bool ok = true;
      for (char c : part.substr(0, colon)) {
        if (c < '0' || c > '9') ok = false;
        index = index * 10 + static_cast<size_t>(c - '0');
      }
      if (ok && index < replicas) out.emplace_back(index, std::string(part.substr(colon + 1)));
    }
    pos = end + 1;
  }
  return out;
}

// A reservation part admitted from a lease: "<kind><lease id>.<estimate>", kind k (key), u (user),
// i (IP) or j (IP, tokens unlimited: nothing to settle).
struct LeasePart {
  char kind = 0;
  std::string lease_id;
  int64_t estimate = 0;
};

std::optional<LeasePart> ParseLeasePart(const std::string& id) {
  if (id.size() < 4 || id[1] != 'l') return std::nullopt;
  if (id[0] != 'k' && id[0] != 'u' && id[0] != 'i' && id[0] != 'j') return std::nullopt;
  size_t dot = id.rfind('.');
  if (dot == std::string::npos || dot < 2) return std::nullopt;
  LeasePart p;
  p.kind = id[0];
  p.lease_id = id.substr(1, dot - 1);
  for (size_t i = dot + 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9' || p.estimate > (INT64_MAX - 9) / 10) return std::nullopt;
    p.estimate = p.estimate * 10 + (id[i] - '0');
  }
  return p;
}

pb::SubjectKind KindProto(char kind) {
  switch (kind) {
    case 'k':
      return pb::SUBJECT_KIND_KEY;
    case 'u':
      return pb::SUBJECT_KIND_USER;
    default:
      return pb::SUBJECT_KIND_IP;
  }
}

}  // namespace

size_t QuotaOwner(std::string_view kind, std::string_view subject, size_t replicas) {
  if (replicas <= 1) return 0;
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](char c) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  };
  for (char c : kind) mix(c);
  mix(':');
  for (char c : subject) mix(c);
  return static_cast<size_t>(h % replicas);
}

struct GrpcQuotaClient::Impl {
  static constexpr uint64_t kNotJournaled = UINT64_MAX;
  struct Queued {
    pb::Settlement settlement;
    uint64_t seq = kNotJournaled;  // its entry in the journal
  };
  struct Replica {
    std::string target;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::QuotaService::Stub> stub;
    std::deque<Queued> queue;
    bool batch_in_flight = false;
    // After a failed batch the replica is left alone for a second (no retry storm, no log flood).
    std::chrono::steady_clock::time_point next_try;
  };

  explicit Impl(GrpcQuotaClientOptions opts) : options(std::move(opts)) {
    if (options.targets.empty()) throw std::invalid_argument("edge.quota_targets is empty");
    for (const auto& t : options.targets) {
      auto r = std::make_unique<Replica>();
      r->target = t;
      r->channel = OpenChannel(t);
      r->stub = pb::QuotaService::NewStub(r->channel);
      replicas.push_back(std::move(r));
    }
    if (options.registry) {
      auto& unavailable_family =
          prometheus::BuildCounter()
              .Name("tollgate_edge_quota_unavailable_total")
              .Help("Admissions that met an unreachable quota replica, by what the edge did")
              .Register(*options.registry);
      unavailable_counter =
          &unavailable_family.Add({{"mode", options.fail_open ? "fail_open" : "fail_closed"}});
      auto& settle_family = prometheus::BuildCounter()
                                .Name("tollgate_edge_quota_settlements_total")
                                .Help("Settlements sent to the quota service, by result")
                                .Register(*options.registry);
      sent_counter = &settle_family.Add({{"result", "acknowledged"}});
      dropped_counter = &settle_family.Add({{"result", "dropped"}});
    }
    if (!options.journal_dir.empty()) OpenJournal();
    flusher = std::thread([this] { FlushLoop(); });
    if (options.leases) {
      lease_replicas.resize(replicas.size());
      leaser = std::thread([this] { LeaseLoop(); });
    }
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    if (!calls.Stop()) return;  // Admit and Release are refused from here on
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    {
      std::lock_guard lock(lease_mu);
      lease_stopping = true;
    }
    lease_cv.notify_all();
    cv.notify_all();
    if (leaser.joinable()) leaser.join();  // its last call returns every lease
    if (flusher.joinable()) flusher.join();
    calls.Drain();
  }

  // ---- Leases ---------------------------------------------------------------------------------

  struct Lease {
    size_t replica = 0;
    char kind = 'k';
    std::string subject;
    std::string id;
    uint64_t incarnation = 0;
    bool unlimited_requests = false;
    bool unlimited_tokens = false;
    int64_t granted_requests = 0;
    int64_t granted_tokens = 0;
    int64_t left_requests = 0;
    int64_t left_tokens = 0;
    int64_t used_requests = 0;  // admitted from it (for the size of the next ask)
    int64_t max_estimate = 1;
    std::chrono::steady_clock::time_point use_until;
    std::chrono::steady_clock::time_point last_used;
    std::chrono::milliseconds ttl{0};
    RateLimitWindow requests_window;  // the replica's figures beyond the lease
    RateLimitWindow tokens_window;
    // Admitted on an unlimited dimension since the last report.
    int64_t report_requests = 0;
    int64_t report_tokens = 0;
  };
  using SubjectKey = std::pair<char, std::string>;  // kind (k, u, i) and subject
  struct Demand {
    size_t replica = 0;
    int64_t estimate = 1;
    int64_t requests = 16;
    bool touched = true;  // wanted since the last ask
    bool asking = false;
    std::chrono::steady_clock::time_point next_ask;
    std::chrono::steady_clock::time_point since;
  };
  struct LeaseReplica {
    bool in_flight = false;
    uint64_t incarnation = 0;
    std::vector<pb::LeaseReturn> returns;  // to send with the next call
  };

  static bool Usable(const Lease& l, int64_t estimate, std::chrono::steady_clock::time_point now) {
    return now < l.use_until && (l.unlimited_requests || l.left_requests >= 1) &&
           (l.unlimited_tokens || l.left_tokens >= estimate);
  }

  pb::LeaseReturn FinalReturn(const Lease& l) {
    pb::LeaseReturn r;
    r.set_lease_id(l.id);
    r.set_final(true);
    r.set_unused_requests(l.unlimited_requests ? 0 : l.left_requests);
    r.set_unused_tokens(l.unlimited_tokens ? 0 : l.left_tokens);
    r.set_used_requests(l.report_requests);
    r.set_used_tokens(l.report_tokens);
    return r;
  }

  // Under lease_mu.
  void CloseLeaseLocked(std::map<SubjectKey, Lease>::iterator it, bool give_back) {
    if (give_back) lease_replicas[it->second.replica].returns.push_back(FinalReturn(it->second));
    lease_ids.erase(it->second.id);
    leases.erase(it);
  }

  void DropReplicaLeasesLocked(size_t replica) {
    for (auto it = leases.begin(); it != leases.end();)
      if (it->second.replica == replica) {
        auto next = std::next(it);
        CloseLeaseLocked(it, /*give_back=*/false);
        it = next;
      } else {
        ++it;
      }
    lease_replicas[replica].returns.clear();
  }

  // Admits from leases when every subject holds a usable one; else notes the demand and answers
  // nothing (the caller goes to the replicas).
  std::optional<AdmitResult> AdmitFromLeases(
      const std::vector<std::pair<SubjectKey, size_t>>& subjects, int64_t estimate) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(lease_mu);
    if (lease_stopping) return std::nullopt;
    bool all = true;
    for (const auto& [key, replica] : subjects) {
      auto it = leases.find(key);
      if (it != leases.end() && Usable(it->second, estimate, now)) continue;
      all = false;
      Demand& d = demand[key];
      if (d.since == std::chrono::steady_clock::time_point{}) d.since = now;
      d.replica = replica;
      d.estimate = std::max(d.estimate, estimate);
      d.touched = true;
    }
    if (!all) return std::nullopt;
    AdmitResult result;
    for (const auto& [key, replica] : subjects) {
      Lease& l = leases.find(key)->second;
      if (!l.unlimited_requests) --l.left_requests;
      if (!l.unlimited_tokens) l.left_tokens -= estimate;
      if (l.unlimited_requests) ++l.report_requests;
      if (l.unlimited_tokens) l.report_tokens = SatAdd(l.report_tokens, estimate);
      ++l.used_requests;
      l.max_estimate = std::max(l.max_estimate, estimate);
      l.last_used = now;
      if (l.requests_window.limit > 0)
        Tighten(result.requests,
                {l.requests_window.limit, l.requests_window.remaining + l.left_requests,
                 l.requests_window.reset_ms});
      if (l.tokens_window.limit > 0)
        Tighten(result.tokens, {l.tokens_window.limit, l.tokens_window.remaining + l.left_tokens,
                                l.tokens_window.reset_ms});
      const char kind = key.first == 'i' && l.unlimited_tokens ? 'j' : key.first;
      if (!result.reservation_id.empty()) result.reservation_id += ',';
      result.reservation_id +=
          std::to_string(replica) + ":" + kind + l.id + "." + std::to_string(estimate);
    }
    admitted_from_leases.fetch_add(1, std::memory_order_relaxed);
    return result;
  }

  // A request admitted from a lease never ran: its share goes back to the lease if still held
  // (else the lease's return already counted it as used: never less than what ran).
  void ReleaseLeasePart(const LeasePart& part) {
    std::lock_guard lock(lease_mu);
    auto id = lease_ids.find(part.lease_id);
    if (id == lease_ids.end()) return;
    auto it = leases.find(id->second);
    if (it == leases.end()) return;
    Lease& l = it->second;
    if (!l.unlimited_requests) ++l.left_requests;
    if (!l.unlimited_tokens) l.left_tokens += part.estimate;
  }

  void LeaseLoop() {
    std::unique_lock lock(lease_mu);
    for (;;) {
      if (lease_stopping)
        lease_cv.wait_for(lock, std::chrono::milliseconds(5));  // for the last answers
      else
        lease_cv.wait_for(lock, options.lease_interval, [this] { return lease_stopping; });
      const auto now = std::chrono::steady_clock::now();
      const auto idle_after = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(100),
                                                                  10 * options.lease_interval);
      if (lease_stopping) {
        // On the way down: every lease goes back, in one last call per replica.
        while (!leases.empty()) CloseLeaseLocked(leases.begin(), /*give_back=*/true);
      }
      for (auto it = leases.begin(); it != leases.end();) {
        auto next = std::next(it);
        Lease& l = it->second;
        if (now >= l.use_until || now - l.last_used > idle_after) {
          CloseLeaseLocked(it, /*give_back=*/true);  // expired, or nobody uses it
        } else {
          const bool low = l.use_until - now < l.ttl / 2 ||
                           (!l.unlimited_requests && l.left_requests * 4 < l.granted_requests) ||
                           (!l.unlimited_tokens && l.left_tokens < 4 * l.max_estimate);
          if (low && now - l.last_used < idle_after) {
            Demand& d = demand[it->first];
            if (d.since == std::chrono::steady_clock::time_point{}) d.since = now;
            d.replica = l.replica;
            d.estimate = std::max(d.estimate, l.max_estimate);
            d.requests = std::clamp<int64_t>(2 * l.used_requests, 16, 100000);
            d.touched = true;
          }
          if (l.report_requests > 0 || l.report_tokens > 0) {
            pb::LeaseReturn r;
            r.set_lease_id(l.id);
            r.set_used_requests(l.report_requests);
            r.set_used_tokens(l.report_tokens);
            lease_replicas[l.replica].returns.push_back(std::move(r));
            l.report_requests = l.report_tokens = 0;
          }
        }
        it = next;
      }
      for (size_t i = 0; i < lease_replicas.size(); ++i) {
        LeaseReplica& rep = lease_replicas[i];
        if (rep.in_flight) continue;
        pb::LeaseRequest request;
        std::vector<SubjectKey> asked;
        if (!lease_stopping) {
          for (auto it = demand.begin(); it != demand.end();) {
            Demand& d = it->second;
            if (d.replica != i || d.asking) {
              ++it;
              continue;
            }
            if (!d.touched) {
              // Nobody wanted it since the last refusal: forget it after a while.
              it = now - d.since > std::chrono::seconds(1) ? demand.erase(it) : std::next(it);
              continue;
            }
            if (now < d.next_ask) {
              ++it;
              continue;
            }
            auto* ask = request.add_asks();
            ask->set_subject_kind(KindProto(it->first.first));
            ask->set_subject(it->first.second);
            ask->set_requests(d.requests);
            ask->set_tokens(SatMul(d.requests, d.estimate));
            ask->set_min_tokens(d.estimate);
            d.asking = true;
            d.touched = false;
            asked.push_back(it->first);
            ++it;
          }
        }
        for (auto& r : rep.returns) *request.add_returns() = std::move(r);
        rep.returns.clear();
        if (request.asks_size() == 0 && request.returns_size() == 0) continue;
        rep.in_flight = true;
        CallUnary<pb::LeaseResponse>(
            calls, options.timeout, std::move(request),
            [stub = replicas[i]->stub.get()](auto... a) { stub->async()->Lease(a...); },
            [this, i, asked = std::move(asked), sent_at = now](const grpc::Status& status,
                                                               pb::LeaseResponse& response) {
              OnLeaseAnswer(i, asked, sent_at, status, response);
            },
            CallTracker::Kind::kDelivery);
      }
      if (lease_stopping) {
        bool idle = true;
        for (const auto& r : lease_replicas) idle = idle && !r.in_flight;
        if (idle) return;
      }
    }
  }

  void OnLeaseAnswer(size_t replica, const std::vector<SubjectKey>& asked,
                     std::chrono::steady_clock::time_point sent_at, const grpc::Status& status,
                     pb::LeaseResponse& response) {
    std::lock_guard lock(lease_mu);
    const auto now = std::chrono::steady_clock::now();
    LeaseReplica& rep = lease_replicas[replica];
    rep.in_flight = false;
    lease_cv.notify_all();
    const bool ok = status.ok() && response.grants_size() == static_cast<int>(asked.size());
    if (!ok || (rep.incarnation != 0 && response.incarnation() != rep.incarnation)) {
      // Unreachable or restarted: what it granted is no longer counted there (or soon will not
      // be), so none of it is used again.
      DropReplicaLeasesLocked(replica);
    }
    if (ok) rep.incarnation = response.incarnation();
    if (ok)
      for (const auto& id : response.recalled_lease_ids()) {
        auto held = lease_ids.find(id);
        if (held == lease_ids.end()) continue;
        auto it = leases.find(held->second);
        // Wanted back: its rest goes with the next call; this subject is admitted by the
        // replica until it grants a new lease.
        if (it != leases.end() && it->second.id == id) CloseLeaseLocked(it, /*give_back=*/true);
      }
    for (size_t k = 0; k < asked.size(); ++k) {
      auto d = demand.find(asked[k]);
      if (d != demand.end()) d->second.asking = false;
      const pb::LeaseGrant* g = ok ? &response.grants(static_cast<int>(k)) : nullptr;
      if (!g || !g->granted()) {
        // Refused (close to a limit) or failed: ask again later if still wanted.
        if (d != demand.end())
          d->second.next_ask = now + std::chrono::milliseconds(ok ? 100 : 1000);
        continue;
      }
      if (lease_stopping) {
        pb::LeaseReturn r;
        r.set_lease_id(g->lease_id());
        r.set_final(true);
        r.set_unused_requests(std::max<int64_t>(0, g->requests()));
        r.set_unused_tokens(std::max<int64_t>(0, g->tokens()));
        rep.returns.push_back(std::move(r));
        continue;
      }
      if (d != demand.end()) demand.erase(d);
      auto old = leases.find(asked[k]);
      int64_t max_estimate = 1;
      if (old != leases.end()) {
        max_estimate = old->second.max_estimate;
        CloseLeaseLocked(old, /*give_back=*/true);  // replaced: its rest goes back
      }
      Lease l;
      l.replica = replica;
      l.kind = asked[k].first;
      l.subject = asked[k].second;
      l.id = g->lease_id();
      l.incarnation = response.incarnation();
      l.unlimited_requests = g->requests() < 0;
      l.unlimited_tokens = g->tokens() < 0;
      l.granted_requests = l.left_requests = std::max<int64_t>(0, g->requests());
      l.granted_tokens = l.left_tokens = std::max<int64_t>(0, g->tokens());
      l.max_estimate = max_estimate;
      l.ttl = std::chrono::milliseconds(g->ttl_ms());
      // From when the call was sent: never past the replica's own deadline for it.
      l.use_until = sent_at + l.ttl;
      l.last_used = now;
      l.requests_window = FromProto(g->requests_window());
      l.tokens_window = FromProto(g->tokens_window());
      lease_ids[l.id] = asked[k];
      leases.emplace(asked[k], std::move(l));
    }
  }

  void CountDropped(size_t n) {
    dropped.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
    if (dropped_counter) dropped_counter->Increment(static_cast<double>(n));
  }

  void ReleasePart(size_t replica, const std::string& reservation_id) {
    pb::ReleaseRequest request;
    request.set_reservation_id(reservation_id);
    // Not sent once shut down (or if it fails): the reservation then expires on its own.
    CallUnary<pb::ReleaseResponse>(
        calls, options.timeout, std::move(request),
        [stub = replicas[replica]->stub.get()](auto... a) { stub->async()->Release(a...); },
        [](const grpc::Status& status, pb::ReleaseResponse&) {
          if (!status.ok())
            log::Debug("edge", "quota Release failed",
                       {{"grpc_code", static_cast<int>(status.error_code())}});
        });
  }

  // ---- The settlement journal -------------------------------------------------------------
  // Entries are "<replica byte><pb::Settlement>", in the order Settle queued them; an entry
  // leaves the journal once it and every older one were acknowledged (or dropped for good).

  // Replays what an earlier run left (settlements it never had acknowledged) into the queues.
  void OpenJournal() {
    journal = std::make_unique<Spool>(SpoolOptions{options.journal_dir, 64ull << 20, 8ull << 20});
    const auto entries = journal->Front(SIZE_MAX);
    size_t replayed = 0;
    std::lock_guard lock(mu);
    for (const auto& e : entries) {
      const uint64_t seq = journal_front + journal_done.size();
      journal_done.push_back(false);
      pb::Settlement s;
      const size_t replica = e.empty() ? SIZE_MAX : static_cast<unsigned char>(e[0]);
      if (replica >= replicas.size() ||
          !s.ParseFromArray(e.data() + 1, static_cast<int>(e.size() - 1))) {
        MarkDoneLocked(seq);  // another replica count, or not ours: nothing to send it to
        continue;
      }
      replicas[replica]->queue.push_back({std::move(s), seq});
      ++replayed;
    }
    if (replayed > 0)
      log::Info("edge", "quota settlements left by an earlier run are sent again",
                {{"settlements", replayed}, {"dir", journal->dir()}});
  }

  // Queues a settlement for `replica`, in the journal first. `mu` held.
  void EnqueueLocked(size_t replica, pb::Settlement s) {
    uint64_t seq = kNotJournaled;
    if (journal) {
      std::string entry;
      entry.reserve(1 + s.ByteSizeLong());
      entry.push_back(static_cast<char>(replica));
      s.AppendToString(&entry);
      if (journal->AppendOne(std::move(entry), Spool::Durability::kWritten).appended == 1) {
        seq = journal_front + journal_done.size();
        journal_done.push_back(false);
      }
    }
    auto& q = replicas[replica]->queue;
    q.push_back({std::move(s), seq});
    if (q.size() > options.max_queued) {
      MarkDoneLocked(q.front().seq);
      q.pop_front();
      CountDropped(1);
    }
  }

  // The entry `seq` needs no sending any more; the journal lets go of the acknowledged prefix.
  void MarkDoneLocked(uint64_t seq) {
    if (!journal || seq == kNotJournaled || seq < journal_front) return;
    const uint64_t i = seq - journal_front;
    if (i >= journal_done.size()) return;
    journal_done[i] = true;
    size_t n = 0;
    while (!journal_done.empty() && journal_done.front()) {
      journal_done.pop_front();
      ++journal_front;
      ++n;
    }
    if (n > 0) journal->Ack(n);
  }

  // One batch per replica in flight at a time; a failed batch goes back to the front of its
  // queue (the quota service is idempotent on request_id), except on the way out (where what
  // was not acknowledged stays in the journal for the next start).
  void FlushLoop() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait_for(lock, options.flush_interval);
      if (journal) {  // what Settle wrote since the last cycle becomes durable
        lock.unlock();
        journal->Sync();
        lock.lock();
      }
      for (size_t i = 0; i < replicas.size(); ++i) {
        Replica& r = *replicas[i];
        if (r.queue.empty() || r.batch_in_flight) continue;
        if (!stopping && std::chrono::steady_clock::now() < r.next_try) continue;
        pb::SettleRequest request;
        size_t n = std::min(r.queue.size(), options.batch_size);
        std::vector<uint64_t> seqs;
        seqs.reserve(n);
        for (size_t k = 0; k < n; ++k) {
          *request.add_settlements() = std::move(r.queue.front().settlement);
          seqs.push_back(r.queue.front().seq);
          r.queue.pop_front();
        }
        r.batch_in_flight = true;
        // Started under `mu`: a delivery is never refused, so its callback never runs inline.
        CallUnary<pb::SettleResponse>(
            calls, options.timeout, std::move(request),
            [stub = r.stub.get()](auto... a) { stub->async()->Settle(a...); },
            [this, i, n, seqs = std::move(seqs)](const grpc::Status& status, pb::SettleResponse&,
                                                 pb::SettleRequest& sent_request) {
              std::lock_guard guard(mu);
              Replica& rep = *replicas[i];
              if (status.ok()) {
                sent.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
                if (sent_counter) sent_counter->Increment(static_cast<double>(n));
                for (uint64_t seq : seqs) MarkDoneLocked(seq);
              } else if (stopping) {
                CountDropped(n);
                log::Warn("edge", "quota Settle failed while stopping; settlements dropped",
                          {{"replica", rep.target},
                           {"settlements", n},
                           {"grpc_code", static_cast<int>(status.error_code())}});
              } else {
                log::Warn("edge", "quota Settle failed; will retry",
                          {{"replica", rep.target},
                           {"settlements", n},
                           {"grpc_code", static_cast<int>(status.error_code())}});
                rep.next_try = std::chrono::steady_clock::now() + std::chrono::seconds(1);
                auto& items = *sent_request.mutable_settlements();
                for (int k = items.size() - 1; k >= 0; --k)
                  rep.queue.push_front({std::move(items[k]), seqs[static_cast<size_t>(k)]});
                while (rep.queue.size() > options.max_queued) {
                  MarkDoneLocked(rep.queue.back().seq);
                  rep.queue.pop_back();
                  CountDropped(1);
                }
              }
              rep.batch_in_flight = false;
              cv.notify_all();
            },
            CallTracker::Kind::kDelivery);
      }
      if (stopping) {
        bool idle = true;
        for (const auto& r : replicas) idle = idle && r->queue.empty() && !r->batch_in_flight;
        if (idle) return;
      }
    }
  }

  GrpcQuotaClientOptions options;
  std::vector<std::unique_ptr<Replica>> replicas;
  CallTracker calls;
  std::mutex mu;  // the settlement queues, the journal's bookkeeping and the flusher's state
  std::unique_ptr<Spool> journal;  // when options.journal_dir is set
  uint64_t journal_front = 0;      // the seq of the journal's oldest entry
  std::deque<bool> journal_done;   // per entry from the oldest: acknowledged or dropped
  std::condition_variable cv;
  bool stopping = false;
  std::atomic<int64_t> sent{0};
  std::atomic<int64_t> dropped{0};
  std::atomic<int64_t> unavailable{0};
  prometheus::Counter* unavailable_counter = nullptr;
  prometheus::Counter* sent_counter = nullptr;
  prometheus::Counter* dropped_counter = nullptr;
  std::thread flusher;

  mutable std::mutex lease_mu;  // leases, demand and the lease loop's state
  std::condition_variable lease_cv;
  bool lease_stopping = false;
  std::map<SubjectKey, Lease> leases;
  std::unordered_map<std::string, SubjectKey> lease_ids;
  std::map<SubjectKey, Demand> demand;
  std::vector<LeaseReplica> lease_replicas;
  std::atomic<int64_t> admitted_from_leases{0};
  std::thread leaser;
};

GrpcQuotaClient::GrpcQuotaClient(GrpcQuotaClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

GrpcQuotaClient::~GrpcQuotaClient() { Shutdown(); }

void GrpcQuotaClient::Shutdown() { impl_->Shutdown(); }

void GrpcQuotaClient::Admit(AdmitRequest request, std::function<void(AdmitResult)> done) {
  struct Part {
    size_t replica = 0;
    pb::AdmitRequest request;
    pb::AdmitResponse response;
    grpc::Status status;
  };
  struct Fanout {
    std::vector<Part> parts;
    std::atomic<size_t> pending{0};
    std::function<void(AdmitResult)> done;
  };
  Impl* impl = impl_.get();
  const size_t n = impl->replicas.size();
  // The subjects and their owning replicas; the usual request is admitted from leases in memory
  // before any of the replicas' call state is built.
  std::vector<std::pair<Impl::SubjectKey, size_t>> subjects;
  if (!request.principal.api_key_id.empty())
    subjects.push_back(
        {{'k', request.principal.api_key_id}, QuotaOwner("key", request.principal.api_key_id, n)});
  if (!request.principal.user_id.empty())
    subjects.push_back(
        {{'u', request.principal.user_id}, QuotaOwner("user", request.principal.user_id, n)});
  if (!request.client_ip.empty())
    subjects.push_back({{'i', request.client_ip}, QuotaOwner("ip", request.client_ip, n)});
  if (subjects.empty()) {
    done(AdmitResult{});  // nobody to limit
    return;
  }
  if (impl->options.leases) {
    if (auto admitted =
            impl->AdmitFromLeases(subjects, std::max<int64_t>(1, request.estimated_tokens))) {
      done(std::move(*admitted));
      return;
    }
  }
  auto fanout = std::make_shared<Fanout>();
  fanout->done = std::move(done);
  for (const auto& [key, replica] : subjects) {
    Part* part = nullptr;
    for (auto& p : fanout->parts)
      if (p.replica == replica) part = &p;
    if (part == nullptr) {
      part = &fanout->parts.emplace_back();
      part->replica = replica;
      part->request.set_request_id(request.request_id);
      part->request.set_model(request.model);
      part->request.set_estimated_tokens(request.estimated_tokens);
    }
    switch (key.first) {
      case 'k':
        part->request.set_api_key_id(key.second);
        break;
      case 'u':
        part->request.set_user_id(key.second);
        break;
      default:
        part->request.set_client_ip(key.second);
        break;
    }
  }
  // Runs once, after the last part's answer: every part has its status and response.
  auto complete = [impl](Fanout& fanout) {
    AdmitResult result;
    const Part* denied = nullptr;
    bool failed = false;
    std::vector<const Part*> granted;
    for (const auto& p : fanout.parts) {
      if (!p.status.ok()) {
        // Unreachable, or an error quota answered: either way no decision, so the outage policy.
        failed = true;
        continue;
      }
      Tighten(result.requests, FromProto(p.response.requests()));
      Tighten(result.tokens, FromProto(p.response.tokens()));
      if (p.response.allowed()) {
        granted.push_back(&p);
      } else if (!denied || (p.response.error_code() == "insufficient_quota" &&
                             denied->response.error_code() != "insufficient_quota")) {
        denied = &p;  // an exhausted quota outranks a full window: retrying will not help
      }
    }
    bool release_granted = false;
    if (denied) {
      release_granted = true;
      int64_t retry = 0;
      for (const auto& p : fanout.parts)
        if (p.status.ok() && !p.response.allowed())
          retry = std::max(retry, p.response.retry_after_ms());
      const bool quota = denied->response.error_code() == "insufficient_quota";
      result.failure = Failure{quota ? ErrorCode::kInsufficientQuota : ErrorCode::kRateLimited,
                               denied->response.message(), retry};
    } else if (failed) {
      impl->unavailable.fetch_add(1, std::memory_order_relaxed);
      if (impl->unavailable_counter) impl->unavailable_counter->Increment();
      static log::Throttle throttle;
      int64_t skipped = 0;
      if (throttle.Allow(&skipped))
        for (const auto& p : fanout.parts)
          if (!p.status.ok())
            log::Warn("edge",
                      impl->options.fail_open ? "quota replica unreachable; admitting (fail open)"
                                              : "quota replica unreachable; refusing (fail closed)",
                      {{"replica", impl->replicas[p.replica]->target},
                       {"grpc_code", static_cast<int>(p.status.error_code())},
                       {"suppressed", skipped}});
      if (!impl->options.fail_open) {
        release_granted = true;
        result.failure =
            Failure{ErrorCode::kServiceUnavailable,
                    "The rate limiting service is unavailable, so the request was not admitted. "
                    "Please retry shortly."};
      }
    }
    if (release_granted) {
      for (const Part* p : granted) impl->ReleasePart(p->replica, p->response.reservation_id());
    } else {
      for (const Part* p : granted) {
        if (!result.reservation_id.empty()) result.reservation_id += ',';
        result.reservation_id += std::to_string(p->replica) + ":" + p->response.reservation_id();
      }
    }
    fanout.done(std::move(result));
  };
  // Answers may arrive (or, once shut down, be given inline) while parts are still being sent:
  // nothing below touches `parts` but through its own index.
  fanout->pending = fanout->parts.size();
  for (size_t i = 0; i < fanout->parts.size(); ++i) {
    CallUnary<pb::AdmitResponse>(
        impl->calls, impl->options.timeout, std::move(fanout->parts[i].request),
        [stub = impl->replicas[fanout->parts[i].replica]->stub.get()](auto... a) {
          stub->async()->Admit(a...);
        },
        [fanout, i, complete](const grpc::Status& status, pb::AdmitResponse& response) {
          fanout->parts[i].status = status;
          fanout->parts[i].response = std::move(response);
          if (fanout->pending.fetch_sub(1) == 1) complete(*fanout);
        });
  }
}

void GrpcQuotaClient::Release(std::string reservation_id) {
  for (auto& [replica, id] : ParseReservation(reservation_id, impl_->replicas.size())) {
    if (auto lease = ParseLeasePart(id))
      impl_->ReleaseLeasePart(*lease);
    else
      impl_->ReleasePart(replica, id);
  }
}

void GrpcQuotaClient::Settle(const UsageRecord& record) {
  if (record.reservation_id.empty() || record.request_id.empty()) return;
  const size_t n = impl_->replicas.size();
  auto parts = ParseReservation(record.reservation_id, n);
  bool wake = false;
  {
    std::lock_guard lock(impl_->mu);
    std::map<size_t, pb::Settlement> lease_settlements;
    auto enqueue = [&](size_t replica, pb::Settlement s) {
      impl_->EnqueueLocked(replica, std::move(s));
      const auto& q = impl_->replicas[replica]->queue;
      // Only a flusher that can send is woken: while the replica's batch is in flight its
      // answer wakes the flusher, and a wake per settlement would cost a futex and a context
      // switch for every request under load.
      wake = wake ||
             (q.size() >= impl_->options.batch_size && !impl_->replicas[replica]->batch_in_flight);
    };
    for (auto& [replica, id] : parts) {
      if (auto lease = ParseLeasePart(id)) {
        // The leases of one replica settle together ("l1+l2"), naming exactly their subjects.
        if (lease->kind == 'j') continue;  // an IP's unlimited tokens: nothing to settle
        pb::Settlement& ls = lease_settlements[replica];
        if (!ls.reservation_id().empty()) ls.mutable_reservation_id()->push_back('+');
        ls.mutable_reservation_id()->append(lease->lease_id);
        ls.set_lease_estimate(lease->estimate);
        if (lease->kind == 'k') ls.set_api_key_id(record.principal.api_key_id);
        if (lease->kind == 'u') ls.set_user_id(record.principal.user_id);
        if (lease->kind == 'i') ls.set_client_ip(record.client_ip);
        continue;
      }
      pb::Settlement s;
      s.set_request_id(record.request_id);
      s.set_actual_tokens(std::max<int64_t>(0, record.prompt_tokens + record.completion_tokens));
      s.set_reservation_id(std::move(id));
      // The subjects this replica owns: charged even if the reservation expired meanwhile.
      if (!record.principal.api_key_id.empty() &&
          QuotaOwner("key", record.principal.api_key_id, n) == replica)
        s.set_api_key_id(record.principal.api_key_id);
      if (!record.principal.user_id.empty() &&
          QuotaOwner("user", record.principal.user_id, n) == replica)
        s.set_user_id(record.principal.user_id);
      enqueue(replica, std::move(s));
    }
    for (auto& [replica, ls] : lease_settlements) {
      ls.set_request_id(record.request_id);
      ls.set_actual_tokens(std::max<int64_t>(0, record.prompt_tokens + record.completion_tokens));
      enqueue(replica, std::move(ls));
    }
  }
  if (wake) impl_->cv.notify_all();
}

int64_t GrpcQuotaClient::settlements_sent() const {
  return impl_->sent.load(std::memory_order_relaxed);
}
int64_t GrpcQuotaClient::settlements_dropped() const {
  return impl_->dropped.load(std::memory_order_relaxed);
}
int64_t GrpcQuotaClient::unavailable() const {
  return impl_->unavailable.load(std::memory_order_relaxed);
}
int64_t GrpcQuotaClient::admitted_from_leases() const {
  return impl_->admitted_from_leases.load(std::memory_order_relaxed);
}
size_t GrpcQuotaClient::live_leases() const {
  std::lock_guard lock(impl_->lease_mu);
  return impl_->leases.size();
}

void GrpcQuotaClient::SimulateCrashForTest() {
  {
    std::lock_guard lock(impl_->lease_mu);
    impl_->leases.clear();  // forgotten, not returned
    impl_->lease_ids.clear();
    impl_->demand.clear();
    for (auto& r : impl_->lease_replicas) r.returns.clear();
  }
  {
    std::lock_guard lock(impl_->mu);
    for (auto& r : impl_->replicas) r->queue.clear();
  }
  Shutdown();
}

}  // namespace tollgate::edge
