#include "src/grpc_auth_client.h"

#include <grpcpp/grpcpp.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "src/grpc_call.h"
#include "tollgate/auth/policy.h"
#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/civil_date.h"
#include "tollgate/grpc_server.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::auth::v1;
using auth::KeyPrincipal;
using auth::Verdict;
using Clock = std::chrono::steady_clock;

constexpr size_t kShards = 16;

auth::KeyStatus FromProto(pb::KeyStatus s) {
  switch (s) {
    case pb::KEY_STATUS_ACTIVE:
      return auth::KeyStatus::kActive;
    case pb::KEY_STATUS_DISABLED:
      return auth::KeyStatus::kDisabled;
    default:
      return auth::KeyStatus::kRevoked;  // unknown: fail closed
  }
}

KeyPrincipal FromProto(const pb::Principal& p) {
  KeyPrincipal out;
  out.key_id = p.api_key_id();
  out.user_id = p.user_id();
  out.key_name = p.key_name();
  out.status = FromProto(p.key_status());
  out.user_status = p.user_status() == pb::USER_STATUS_ACTIVE ? auth::UserStatus::kActive
                                                              : auth::UserStatus::kDisabled;
  out.expires_at = p.expires_at();
  out.allowed_models.assign(p.allowed_models().begin(), p.allowed_models().end());
  out.allowed_cidrs.assign(p.allowed_cidrs().begin(), p.allowed_cidrs().end());
  out.limits_ref = p.limits_ref();
  out.store_bodies = p.store_bodies();
  out.version = p.version();
  auth::ParseNetworks(out);  // an entry that does not parse matches nobody
  return out;
}

AuthResult Refuse(ErrorCode code, std::string message) {
  AuthResult r;
  r.failure = Failure{code, std::move(message)};
  return r;
}

AuthResult IncorrectKey(std::string_view key) {
  return Refuse(ErrorCode::kInvalidApiKey,
                "Incorrect API key provided: " + auth::MaskApiKey(key) +
                    ". You can obtain an API key from your Tollgate administrator.");
}

// The answer for one request, from what is known about its key. The split between 401 and 403:
// a key that is not (or no longer) a valid credential (unknown, revoked, disabled) is 401
// invalid_api_key, as OpenAI answers for invalid keys; a valid key that may not do this (its
// user is disabled, it expired, the client's address or the model is not allowed) is 403.
AuthResult Decide(bool known, const KeyPrincipal& p, std::string_view key,
                  std::string_view client_ip, int64_t now_s) {
  if (!known) return IncorrectKey(key);
  const std::string masked = auth::MaskApiKey(key);
  switch (auth::Evaluate(p, client_ip, now_s)) {
    case Verdict::kOk:
      break;
    case Verdict::kUnknownKey:
      return IncorrectKey(key);
    case Verdict::kKeyRevoked:
      return Refuse(ErrorCode::kInvalidApiKey,
                    "The API key " + masked + " has been revoked. Use another API key.");
    case Verdict::kKeyDisabled:
      return Refuse(ErrorCode::kInvalidApiKey, "The API key " + masked + " is disabled.");
    case Verdict::kKeyExpired:
      return Refuse(ErrorCode::kPermissionDenied,
                    "The API key " + masked + " expired at " + FormatTimestamp(std::chrono::sys_seconds(std::chrono::seconds(p.expires_at))) + ".");
    case Verdict::kUserDisabled:
      return Refuse(ErrorCode::kPermissionDenied,
                    "The user the API key " + masked + " belongs to is disabled.");
    case Verdict::kIpNotAllowed:
      return Refuse(ErrorCode::kPermissionDenied,
                    "Requests from your IP address (" + std::string(client_ip.substr(0, 64)) +
                        ") are not allowed with the API key " + masked + ".");
  }
  AuthResult r;
  r.principal.api_key_id = std::to_string(p.key_id);
  r.principal.user_id = std::to_string(p.user_id);
  r.principal.allowed_models = p.allowed_models;
  r.principal.limits_ref = p.limits_ref;
  r.principal.store_bodies = p.store_bodies;
  return r;
}

}  // namespace

struct GrpcAuthClient::Impl {
  struct Entry {
    bool known = false;
    KeyPrincipal principal;
    Clock::time_point confirmed;  // when auth last vouched for it (answer, snapshot or push)
    uint64_t epoch = 0;           // the watch stream it was last confirmed on; 0: none
    int64_t used_at = 0;          // unix seconds of the last allowed request not yet reported
  };
  struct Waiter {
    std::string key;
    std::string client_ip;
    std::function<void(AuthResult)> done;
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Entry> entries;
    std::unordered_map<std::string, std::vector<Waiter>> flights;
  };

  class Watch final : public grpc::ClientReadReactor<pb::WatchKeysResponse> {
   public:
    Watch(Impl& impl, uint64_t epoch) : impl_(impl), epoch_(epoch) {}
    grpc::ClientContext context;
    pb::WatchKeysRequest request;

    void Begin() {
      impl_.stub->async()->WatchKeys(&context, &request, this);
      StartRead(&response_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;  // OnDone follows
      impl_.OnWatchMessage(epoch_, response_);
      response_.Clear();
      StartRead(&response_);
    }
    void OnDone(const grpc::Status& status) override {
      impl_.OnWatchDone(this, status);
      // The watch counts as a call in flight until it is gone (see CallTracker::End).
      impl_.calls.End(&context, [this] { delete this; });
    }

   private:
    Impl& impl_;
    uint64_t epoch_;
    pb::WatchKeysResponse response_;
  };

  explicit Impl(GrpcAuthClientOptions opts)
      : options(std::move(opts)),
        channel(OpenChannel(options.target)),
        stub(pb::AuthService::NewStub(channel)),
        per_shard(std::max<size_t>(1, options.max_entries / kShards)),
        backoff(options.backoff_min),
        background([this] { Loop(); }) {}

  ~Impl() { Shutdown(); }

  int64_t NowUnix() const {
    auto now = options.wall_clock ? options.wall_clock() : std::chrono::system_clock::now();
    return std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  }

  Shard& ShardOf(const std::string& hash) {
    return shards[static_cast<unsigned char>(hash[0]) % kShards];
  }

  bool Trusted(const Entry& e, Clock::time_point now) const {
    if (!e.known) return now - e.confirmed < options.negative_ttl;
    if (synced.load(std::memory_order_acquire) &&
        e.epoch == current_epoch.load(std::memory_order_acquire))
      return true;
    return now - e.confirmed < options.cache_ttl;
  }

  // Under the shard's lock.
  AuthResult DecideLocked(Entry& e, std::string_view key, std::string_view client_ip) {
    const int64_t now_s = NowUnix();
    AuthResult r = Decide(e.known, e.principal, key, client_ip, now_s);
    if (!r.failure) e.used_at = now_s;
    return r;
  }

  // Makes room in a full shard: any entry will do (it is fetched again when next needed).
  void MakeRoomLocked(Shard& shard) {
    while (shard.entries.size() >= per_shard) shard.entries.erase(shard.entries.begin());
  }

  // Stores what auth says about a key. `known` false: no such key.
  void StoreLocked(Shard& shard, const std::string& hash, bool known, const pb::Principal* p,
                   uint64_t epoch, Clock::time_point now) {
    auto it = shard.entries.find(hash);
    if (it == shard.entries.end()) {
      MakeRoomLocked(shard);
      it = shard.entries.emplace(hash, Entry{}).first;
    }
    Entry& e = it->second;
    // Of two views of a key the higher version is the newer (answers and pushes may cross).
    if (!(known && e.known && e.principal.version > p->version())) {
      e.known = known;
      e.principal = known ? FromProto(*p) : KeyPrincipal{};
    }
    e.confirmed = now;
    e.epoch = epoch;
  }

  void Authenticate(std::string key, std::string client_ip, std::function<void(AuthResult)> done) {
    if (key.empty()) {
      done(Refuse(ErrorCode::kInvalidApiKey,
                  "You didn't provide an API key. You need to provide your API key in an "
                  "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                  "or in an api-key header."));
      return;
    }
    // Not shaped like a Tollgate key: it cannot be one, so no lookup at all.
    if (!auth::LooksLikeApiKey(key)) {
      done(IncorrectKey(key));
      return;
    }
    std::string hash = auth::HashApiKey(key);
    Shard& shard = ShardOf(hash);
    const auto now = Clock::now();
    {
      std::unique_lock lock(shard.mu);
      auto it = shard.entries.find(hash);
      if (it != shard.entries.end() && Trusted(it->second, now)) {
        AuthResult r = DecideLocked(it->second, key, client_ip);
        lock.unlock();
        done(std::move(r));
        return;
      }
      auto& waiters = shard.flights[hash];
      waiters.push_back({std::move(key), std::move(client_ip), std::move(done)});
      if (waiters.size() > 1) return;  // single flight: the call in progress answers this one too
    }
    StartAuthenticate(std::move(hash));
  }

  void StartAuthenticate(std::string hash) {
    pb::AuthenticateRequest request;
    request.set_key_hash(hash);
    // The waiters' addresses may differ; the verdict is made here per waiter, so auth need not
    // check one.
    // An answer confirms the entry for the stream that is up now (a push that crosses it is
    // reconciled by version).
    const uint64_t epoch = synced.load() ? current_epoch.load() : 0;
    CallUnary<pb::AuthenticateResponse>(
        calls, options.timeout, std::move(request),
        [this](auto... a) {
          remote.fetch_add(1, std::memory_order_relaxed);
          stub->async()->Authenticate(a...);
        },
        [this, hash = std::move(hash), epoch](const grpc::Status& status,
                                              pb::AuthenticateResponse& response) {
          FinishFlight(hash, &response, status, epoch);
        });
  }

  void FinishFlight(const std::string& hash, const pb::AuthenticateResponse* response,
                    const grpc::Status& status, uint64_t epoch) {
    Shard& shard = ShardOf(hash);
    const auto now = Clock::now();
    std::vector<Waiter> waiters;
    std::vector<AuthResult> results;
    {
      std::lock_guard lock(shard.mu);
      auto flight = shard.flights.find(hash);
      if (flight == shard.flights.end()) return;
      waiters = std::move(flight->second);
      shard.flights.erase(flight);
      if (status.ok()) {
        const bool known = response->result() != pb::AUTH_RESULT_UNKNOWN_KEY &&
                           response->result() != pb::AUTH_RESULT_UNSPECIFIED &&
                           response->has_principal();
        StoreLocked(shard, hash, known, &response->principal(), epoch, now);
        Entry& e = shard.entries[hash];
        for (auto& w : waiters) results.push_back(DecideLocked(e, w.key, w.client_ip));
      } else {
        auto it = shard.entries.find(hash);
        const bool stale_ok = Unreachable(status) && it != shard.entries.end() &&
                              it->second.known &&
                              now - it->second.confirmed < options.cache_ttl + options.max_stale;
        for (auto& w : waiters) {
          if (stale_ok) {
            results.push_back(DecideLocked(it->second, w.key, w.client_ip));
          } else {
            results.push_back(Refuse(ErrorCode::kServiceUnavailable,
                                     "The authentication service is unavailable. Retry later."));
          }
        }
        if (stale_ok) {
          stale_served.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    if (!status.ok()) WarnUnreachable(status);
    for (size_t i = 0; i < waiters.size(); ++i) waiters[i].done(std::move(results[i]));
  }

  // At most one warning per 10 s: an outage must not flood the log.
  void WarnUnreachable(const grpc::Status& status) {
    auto now = Clock::now().time_since_epoch().count();
    auto last = last_warning.load(std::memory_order_relaxed);
    if (now - last < std::chrono::nanoseconds(std::chrono::seconds(10)).count()) return;
    if (!last_warning.compare_exchange_strong(last, now)) return;
    log::Warn("edge",
              "auth Authenticate failed; cached principals keep working, unknown keys get 503",
              {{"grpc_code", static_cast<int>(status.error_code())},
               {"error", status.error_message()},
               {"stale_answers", stale_served.load()}});
  }

  // ---- WatchKeys --------------------------------------------------------------------------

  void OnWatchMessage(uint64_t epoch, const pb::WatchKeysResponse& message) {
    const auto now = Clock::now();
    {
      std::lock_guard lock(mu);
      last_message = now;
    }
    for (const auto& u : message.updates()) {
      if (u.key_hash().empty()) continue;
      Shard& shard = ShardOf(u.key_hash());
      std::lock_guard lock(shard.mu);
      if (!u.known()) {
        // Only in the answer to a reconnect: auth has no such key (any more). Forget it; the
        // next request asks again.
        shard.entries.erase(u.key_hash());
        continue;
      }
      // Keys this edge neither holds nor is asking about are none of its business; a key asked
      // about right now is stored, so an older answer crossing this push cannot win.
      if (!shard.entries.count(u.key_hash()) && !shard.flights.count(u.key_hash())) continue;
      StoreLocked(shard, u.key_hash(), true, &u.principal(), epoch, now);
    }
    if (message.synced() && epoch == current_epoch.load()) {
      synced.store(true, std::memory_order_release);
      std::lock_guard lock(mu);
      backoff = options.backoff_min;
      log::Info("edge", "watching auth for key changes", {{"target", options.target}});
    }
  }

  void OnWatchDone(Watch* watch, const grpc::Status& status) {
    std::lock_guard lock(mu);
    if (watch_call == watch) {
      watch_call = nullptr;
      synced.store(false, std::memory_order_release);
      next_attempt = Clock::now() + backoff;
      backoff = std::min(options.backoff_max, backoff * 2);
      if (!stopping)
        log::Write(status.error_code() == grpc::StatusCode::UNAVAILABLE ? log::Level::kDebug
                                                                        : log::Level::kWarn,
                   "edge", "auth WatchKeys stream ended; reconnecting",
                   {{"grpc_code", static_cast<int>(status.error_code())},
                    {"error", status.error_message()}});
    }
    cv.notify_all();
  }

  // Under mu; the caller calls Begin() after unlocking.
  Watch* PrepareWatchLocked() {
    auto* watch = new Watch(*this, ++epoch_counter);
    current_epoch.store(epoch_counter, std::memory_order_release);
    synced.store(false, std::memory_order_release);
    // Every key held: auth answers them first, so what changed while the stream was down is
    // learnt at once.
    for (auto& shard : shards) {
      std::lock_guard lock(shard.mu);
      for (const auto& [hash, e] : shard.entries)
        if (e.known) watch->request.add_key_hashes(hash);
    }
    if (!calls.Begin(&watch->context)) {  // shutting down
      delete watch;
      return nullptr;
    }
    watch_call = watch;  // a call in flight until the Watch is deleted (OnDone)
    last_message = Clock::now();
    return watch;
  }

  // ---- usage reports ----------------------------------------------------------------------

  void FlushUsage(bool blocking) {
    pb::ReportKeyUsageRequest request;
    for (auto& shard : shards) {
      std::lock_guard lock(shard.mu);
      for (auto& [hash, e] : shard.entries) {
        if (e.used_at == 0) continue;
        auto* u = request.add_usages();
        u->set_api_key_id(e.principal.key_id);
        u->set_last_used_at(e.used_at);
        e.used_at = 0;
      }
    }
    if (request.usages_size() == 0) return;
    if (blocking) {
      grpc::ClientContext context;
      SetDeadline(context, options.timeout);
      pb::ReportKeyUsageResponse response;
      auto status = stub->ReportKeyUsage(&context, request, &response);
      if (!status.ok()) log::Debug("edge", "auth ReportKeyUsage failed at shutdown");
      return;
    }
    CallUnary<pb::ReportKeyUsageResponse>(
        calls, options.timeout, std::move(request),
        [this](auto... a) { stub->async()->ReportKeyUsage(a...); },
        [](const grpc::Status& status, pb::ReportKeyUsageResponse&) {
          // Last-used times are informational: a lost batch is only
          // late information, not worth a retry queue.
          if (!status.ok())
            log::Debug("edge", "auth ReportKeyUsage failed",
                       {{"grpc_code", static_cast<int>(status.error_code())}});
        });
  }

  // ---- lifecycle --------------------------------------------------------------------------

  void Loop() {
    auto next_flush = Clock::now() + options.usage_flush_interval;
    std::unique_lock lock(mu);
    while (!stopping) {
      auto now = Clock::now();
      if (watch_call == nullptr && now >= next_attempt) {
        Watch* watch = PrepareWatchLocked();
        if (watch == nullptr) break;
        lock.unlock();
        watch->Begin();
        lock.lock();
        continue;
      }
      if (watch_call != nullptr && now - last_message > options.watch_idle_timeout) {
        // Silent too long (no heartbeat): the connection is dead without knowing it.
        log::Warn("edge", "auth WatchKeys stream silent; reconnecting");
        last_message = now;
        watch_call->context.TryCancel();
      }
      if (now >= next_flush) {
        lock.unlock();
        FlushUsage(false);
        lock.lock();
        next_flush = Clock::now() + options.usage_flush_interval;
      }
      auto wake = std::min(next_flush, last_message + options.watch_idle_timeout);
      if (watch_call == nullptr) wake = std::min(wake, next_attempt);
      cv.wait_until(lock, std::max(wake, Clock::now() + std::chrono::milliseconds(10)));
    }
  }

  void Shutdown() {
    {
      std::lock_guard lock(mu);
      if (stopping) return;
      stopping = true;
    }
    calls.Stop();  // new calls are answered as unreachable (cached principals, else 503)
    cv.notify_all();
    background.join();
    calls.Drain();  // the watch stream too
    FlushUsage(true);
  }

  GrpcAuthClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::AuthService::Stub> stub;
  CallTracker calls;
  std::array<Shard, kShards> shards;
  const size_t per_shard;

  std::atomic<bool> synced{false};
  std::atomic<uint64_t> current_epoch{0};
  std::atomic<int64_t> remote{0};
  std::atomic<int64_t> stale_served{0};
  std::atomic<Clock::rep> last_warning{0};

  std::mutex mu;  // everything below
  std::condition_variable cv;
  bool stopping = false;
  Watch* watch_call = nullptr;
  uint64_t epoch_counter = 0;
  Clock::time_point next_attempt{};
  Clock::time_point last_message{};
  std::chrono::milliseconds backoff;
  std::thread background;  // last: starts once everything above exists
};

GrpcAuthClient::GrpcAuthClient(GrpcAuthClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

GrpcAuthClient::~GrpcAuthClient() = default;

void GrpcAuthClient::Shutdown() { impl_->Shutdown(); }

void GrpcAuthClient::Authenticate(std::string api_key, std::string client_ip,
                                  std::function<void(AuthResult)> done) {
  impl_->Authenticate(std::move(api_key), std::move(client_ip), std::move(done));
}

bool GrpcAuthClient::watch_synced() const { return impl_->synced.load(); }

int64_t GrpcAuthClient::remote_calls() const { return impl_->remote.load(); }

}  // namespace tollgate::edge
