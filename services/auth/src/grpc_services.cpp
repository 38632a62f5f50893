#include "src/grpc_services.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <deque>
#include <mutex>
#include <set>

#include "tollgate/admin_call.h"
#include "tollgate/audit_grpc.h"
#include "tollgate/background_thread.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/log.h"

namespace tollgate::auth {
namespace {

namespace pb = ::tollgate::auth::v1;

constexpr size_t kMaxUpdatesPerMessage = 1000;
// A stream this far behind is ended; its edge reconnects and resynchronises.
constexpr size_t kMaxQueuedMessages = 10000;
constexpr size_t kKeyHashBytes = 32;

pb::KeyStatus ToProto(KeyStatus s) {
  switch (s) {
    case KeyStatus::kActive:
      return pb::KEY_STATUS_ACTIVE;
    case KeyStatus::kDisabled:
      return pb::KEY_STATUS_DISABLED;
    case KeyStatus::kRevoked:
      return pb::KEY_STATUS_REVOKED;
  }
  return pb::KEY_STATUS_UNSPECIFIED;
}

pb::UserStatus ToProto(UserStatus s) {
  return s == UserStatus::kActive ? pb::USER_STATUS_ACTIVE : pb::USER_STATUS_DISABLED;
}

pb::AuthResult ToProto(Verdict v) {
  switch (v) {
    case Verdict::kOk:
      return pb::AUTH_RESULT_OK;
    case Verdict::kUnknownKey:
      return pb::AUTH_RESULT_UNKNOWN_KEY;
    case Verdict::kKeyDisabled:
      return pb::AUTH_RESULT_KEY_DISABLED;
    case Verdict::kKeyRevoked:
      return pb::AUTH_RESULT_KEY_REVOKED;
    case Verdict::kKeyExpired:
      return pb::AUTH_RESULT_KEY_EXPIRED;
    case Verdict::kUserDisabled:
      return pb::AUTH_RESULT_USER_DISABLED;
    case Verdict::kIpNotAllowed:
      return pb::AUTH_RESULT_IP_NOT_ALLOWED;
  }
  return pb::AUTH_RESULT_UNSPECIFIED;
}

void Fill(const KeyPrincipal& p, pb::Principal* out) {
  out->set_api_key_id(p.key_id);
  out->set_user_id(p.user_id);
  out->set_key_status(ToProto(p.status));
  out->set_user_status(ToProto(p.user_status));
  out->set_expires_at(p.expires_at);
  for (const auto& m : p.allowed_models) out->add_allowed_models(m);
  for (const auto& c : p.allowed_cidrs) out->add_allowed_cidrs(c);
  out->set_limits_ref(p.limits_ref);
  out->set_store_bodies(p.store_bodies);
  out->set_version(p.version);
  out->set_key_name(p.key_name);
}

void Fill(const UserRecord& u, pb::User* out) {
  out->set_id(u.id);
  out->set_name(u.name);
  out->set_status(ToProto(u.status));
  for (const auto& [k, v] : u.metadata) (*out->mutable_metadata())[k] = v;
  out->set_created(u.created);
}

// Deliberately no hash, let alone a key: the listing carries the display prefix only.
void Fill(const ApiKeyRecord& k, pb::ApiKey* out) {
  out->set_id(k.id);
  out->set_user_id(k.user_id);
  out->set_name(k.name);
  out->set_display_prefix(k.display_prefix);
  out->set_status(ToProto(k.status));
  out->set_expires_at(k.expires_at);
  for (const auto& m : k.allowed_models) out->add_allowed_models(m);
  for (const auto& c : k.allowed_cidrs) out->add_allowed_cidrs(c);
  out->set_limits_ref(k.limits_ref);
  out->set_store_bodies(k.store_bodies);
  out->set_last_used_at(k.last_used_at);
  out->set_created(k.created);
}

struct Metrics {
  explicit Metrics(prometheus::Registry* registry) {
    if (registry == nullptr) return;
    auto& family = prometheus::BuildCounter()
                       .Name("tollgate_auth_authenticate_total")
                       .Help("Authenticate calls by result")
                       .Register(*registry);
    for (int v = 0; v <= static_cast<int>(Verdict::kIpNotAllowed); ++v)
      results[v] = &family.Add({{"result", std::string(VerdictName(static_cast<Verdict>(v)))}});
    streams = &prometheus::BuildGauge()
                   .Name("tollgate_auth_watch_streams")
                   .Help("Open WatchKeys streams (one per connected edge)")
                   .Register(*registry)
                   .Add({});
    pushed = &prometheus::BuildCounter()
                  .Name("tollgate_auth_key_updates_pushed_total")
                  .Help("Key updates pushed to WatchKeys streams")
                  .Register(*registry)
                  .Add({});
  }
  void Count(Verdict v) {
    if (auto* c = results[static_cast<int>(v)]) c->Increment();
  }
  std::array<prometheus::Counter*, static_cast<int>(Verdict::kIpNotAllowed) + 1> results{};
  prometheus::Gauge* streams = nullptr;
  prometheus::Counter* pushed = nullptr;
};

class Hub;

class WatchReactor final : public grpc::ServerWriteReactor<pb::WatchKeysResponse> {
 public:
  WatchReactor(Hub& hub, const KeyCache& cache, const pb::WatchKeysRequest& request);

  void Push(pb::WatchKeysResponse message) {
    std::lock_guard lock(mu_);
    if (finishing_) return;
    if (queue_.size() >= kMaxQueuedMessages) {
      FinishLocked(ToGrpcStatus(ErrorCode::kOverloaded,
                                "this watcher fell too far behind; reconnect to resynchronise"));
      return;
    }
    queue_.push_back(std::move(message));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  void Close(grpc::Status status) {
    std::lock_guard lock(mu_);
    FinishLocked(std::move(status));
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    queue_.pop_front();
    writing_ = false;
    // A failed write: the client went away, or the call was cancelled; the call is over.
    if (!ok) FinishLocked(grpc::Status::CANCELLED);
    // Finishing (now, or asked for while this write was out): the status goes now. A call
    // closed (shutdown, overload, OnCancel) while a write was stuck ends with a failed write,
    // and without its Finish here it never ends: gRPC's Server::Shutdown waits for it forever.
    if (finishing_) {
      if (!finished_) DoFinish();
      return;
    }
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  void OnCancel() override { Close(grpc::Status::CANCELLED); }
  void OnDone() override;

 private:
  // Finish waits for a write in progress: the status goes out after it.
  void FinishLocked(grpc::Status status) {
    if (finishing_) return;
    finishing_ = true;
    status_ = std::move(status);
    if (!writing_) DoFinish();
  }
  void DoFinish() {
    finished_ = true;
    Finish(status_);
  }

  Hub& hub_;
  std::mutex mu_;
  std::deque<pb::WatchKeysResponse> queue_;
  bool writing_ = false;
  bool finishing_ = false;
  bool finished_ = false;
  grpc::Status status_;
};

class Hub final : public WatchHub {
 public:
  Hub(KeyCache& cache, std::chrono::milliseconds heartbeat, std::shared_ptr<Metrics> metrics)
      : cache_(cache), metrics_(std::move(metrics)) {
    listener_ = cache_.Subscribe([this](const std::vector<KeyChange>& changes) {
      // One message per batch (a user's status change touches all of its keys at once).
      for (size_t at = 0; at < changes.size(); at += kMaxUpdatesPerMessage) {
        pb::WatchKeysResponse message;
        for (size_t i = at; i < std::min(changes.size(), at + kMaxUpdatesPerMessage); ++i) {
          auto* u = message.add_updates();
          u->set_key_hash(changes[i].key_hash);
          u->set_known(true);
          Fill(changes[i].principal, u->mutable_principal());
        }
        Broadcast(message);
      }
    });
    heartbeat_.Every(heartbeat, [this] { Broadcast(pb::WatchKeysResponse{}); });
  }

  ~Hub() override {
    cache_.Unsubscribe(listener_);
    heartbeat_.Stop();
  }

  // False once closed: the stream is refused.
  bool Add(WatchReactor* reactor) {
    std::lock_guard lock(mu_);
    if (closed_) return false;
    reactors_.insert(reactor);
    if (metrics_->streams) metrics_->streams->Set(static_cast<double>(reactors_.size()));
    return true;
  }

  void Remove(WatchReactor* reactor) {
    std::lock_guard lock(mu_);
    reactors_.erase(reactor);
    if (metrics_->streams) metrics_->streams->Set(static_cast<double>(reactors_.size()));
  }

  void CloseAll() override {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (auto* r : reactors_)
      r->Close(ToGrpcStatus(ErrorCode::kServiceUnavailable, "the auth service is shutting down"));
  }

  size_t streams() const override {
    std::lock_guard lock(mu_);
    return reactors_.size();
  }

 private:
  void Broadcast(const pb::WatchKeysResponse& message) {
    std::lock_guard lock(mu_);
    for (auto* r : reactors_) r->Push(message);
    if (metrics_->pushed && message.updates_size() > 0)
      metrics_->pushed->Increment(static_cast<double>(message.updates_size() * reactors_.size()));
  }

  KeyCache& cache_;
  std::shared_ptr<Metrics> metrics_;
  int64_t listener_ = 0;
  mutable std::mutex mu_;  // held while pushing, so a reactor cannot be deleted meanwhile
  std::set<WatchReactor*> reactors_;
  bool closed_ = false;
  BackgroundThread heartbeat_;  // last: stopped before the members its loop uses
};

WatchReactor::WatchReactor(Hub& hub, const KeyCache& cache, const pb::WatchKeysRequest& request)
    : hub_(hub) {
  // Subscribed before the snapshot is taken, so no change falls between the two; a change seen
  // twice is harmless (the receiver keeps the higher version).
  if (!hub_.Add(this)) {
    std::lock_guard lock(mu_);
    FinishLocked(ToGrpcStatus(ErrorCode::kServiceUnavailable, "the auth service is shutting down"));
    return;
  }
  pb::WatchKeysResponse message;
  for (const auto& hash : request.key_hashes()) {
    auto* u = message.add_updates();
    u->set_key_hash(hash);
    if (auto principal = cache.Find(hash)) {
      u->set_known(true);
      Fill(*principal, u->mutable_principal());
    }
    if (message.updates_size() >= static_cast<int>(kMaxUpdatesPerMessage)) {
      Push(std::move(message));
      message = {};
    }
  }
  message.set_synced(true);
  Push(std::move(message));
}

void WatchReactor::OnDone() {
  hub_.Remove(this);
  delete this;
}

class AuthServiceImpl final : public pb::AuthService::CallbackService {
 public:
  AuthServiceImpl(AuthServiceDeps deps, std::shared_ptr<Metrics> metrics, Hub& hub)
      : deps_(deps), metrics_(std::move(metrics)), hub_(hub) {}

  grpc::ServerUnaryReactor* Authenticate(grpc::CallbackServerContext* context,
                                         const pb::AuthenticateRequest* request,
                                         pb::AuthenticateResponse* response) override {
    auto* reactor = context->DefaultReactor();
    std::string hash;
    if (!request->api_key().empty()) {
      // Anything not shaped like a key cannot be one: no lookup.
      if (LooksLikeApiKey(request->api_key())) hash = HashApiKey(request->api_key());
    } else if (request->key_hash().size() == kKeyHashBytes) {
      hash = request->key_hash();
    } else {
      reactor->Finish(
          ToGrpcStatus(ErrorCode::kInvalidRequest, "give api_key or a 32-byte key_hash"));
      return reactor;
    }
    AuthDecision decision;
    if (!hash.empty()) decision = deps_.authenticator.Authenticate(hash, request->client_ip());
    metrics_->Count(decision.verdict);
    response->set_result(ToProto(decision.verdict));
    if (decision.principal) Fill(*decision.principal, response->mutable_principal());
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<pb::WatchKeysResponse>* WatchKeys(
      grpc::CallbackServerContext* context, const pb::WatchKeysRequest* request) override {
    return new WatchReactor(hub_, deps_.cache, *request);
  }

  grpc::ServerUnaryReactor* ReportKeyUsage(grpc::CallbackServerContext* context,
                                           const pb::ReportKeyUsageRequest* request,
                                           pb::ReportKeyUsageResponse*) override {
    auto* reactor = context->DefaultReactor();
    // A caller's clock ahead of ours must not write "last used" into the future.
    const int64_t now = deps_.clock.UnixSeconds();
    for (const auto& u : request->usages())
      if (u.api_key_id() > 0 && u.last_used_at() > 0)
        deps_.recorder.Record(u.api_key_id(), std::min(u.last_used_at(), now));
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  AuthServiceDeps deps_;
  std::shared_ptr<Metrics> metrics_;
  Hub& hub_;
};

std::optional<UserStatus> FromProto(pb::UserStatus s) {
  switch (s) {
    case pb::USER_STATUS_ACTIVE:
      return UserStatus::kActive;
    case pb::USER_STATUS_DISABLED:
      return UserStatus::kDisabled;
    default:
      return std::nullopt;
  }
}

std::optional<KeyStatus> FromProto(pb::KeyStatus s) {
  switch (s) {
    case pb::KEY_STATUS_ACTIVE:
      return KeyStatus::kActive;
    case pb::KEY_STATUS_DISABLED:
      return KeyStatus::kDisabled;
    case pb::KEY_STATUS_REVOKED:
      return KeyStatus::kRevoked;
    default:
      return std::nullopt;
  }
}

template <typename Repeated>
std::vector<std::string> Strings(const Repeated& items) {
  return {items.begin(), items.end()};
}

class AuthAdminServiceImpl final : public pb::AuthAdminService::CallbackService {
 public:
  explicit AuthAdminServiceImpl(AdminServiceDeps deps) : deps_(std::move(deps)) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const pb::GetStatusRequest*,
                                      pb::GetStatusResponse* response) override {
    return RunStatusCall(context, [&] { deps_.status(response); });
  }

  grpc::ServerUnaryReactor* CreateUser(grpc::CallbackServerContext* context,
                                       const pb::CreateUserRequest* request,
                                       pb::CreateUserResponse* response) override {
    return OnWorker(context, "CreateUser", [=, this] {
      NewUser user;
      user.name = request->name();
      user.metadata = {request->metadata().begin(), request->metadata().end()};
      if (request->status() != pb::USER_STATUS_UNSPECIFIED) {
        auto status = FromProto(request->status());
        if (!status) throw Error(ErrorCode::kInvalidRequest, "unknown status");
        user.status = *status;
      }
      Fill(deps_.admin.CreateUser(std::move(user),
                                  MakeAuditEntry(*context, "create_user", "", *request)),
           response->mutable_user());
    });
  }

  grpc::ServerUnaryReactor* UpdateUser(grpc::CallbackServerContext* context,
                                       const pb::UpdateUserRequest* request,
                                       pb::UpdateUserResponse* response) override {
    return OnWorker(context, "UpdateUser", [=, this] {
      UserPatch patch;
      if (request->has_name()) patch.name = request->name();
      if (request->status() != pb::USER_STATUS_UNSPECIFIED) {
        patch.status = FromProto(request->status());
        if (!patch.status) throw Error(ErrorCode::kInvalidRequest, "unknown status");
      }
      patch.set_metadata = {request->set_metadata().begin(), request->set_metadata().end()};
      patch.remove_metadata = Strings(request->remove_metadata());
      Fill(
          deps_.admin.UpdateUser(request->id(), std::move(patch),
                                 MakeAuditEntry(*context, "update_user",
                                                "user:" + std::to_string(request->id()), *request)),
          response->mutable_user());
    });
  }

  grpc::ServerUnaryReactor* ListUsers(grpc::CallbackServerContext* context,
                                      const pb::ListUsersRequest*,
                                      pb::ListUsersResponse* response) override {
    return OnWorker(context, "ListUsers", [=, this] {
      for (const auto& u : deps_.admin.ListUsers()) Fill(u, response->add_users());
    });
  }

  grpc::ServerUnaryReactor* CreateApiKey(grpc::CallbackServerContext* context,
                                         const pb::CreateApiKeyRequest* request,
                                         pb::CreateApiKeyResponse* response) override {
    return OnWorker(context, "CreateApiKey", [=, this] {
      NewKeyRequest r;
      r.user_id = request->user_id();
      r.name = request->name();
      r.expires_at = request->expires_at();
      r.ttl_seconds = request->ttl_seconds();
      r.allowed_models = Strings(request->allowed_models());
      r.allowed_cidrs = Strings(request->allowed_cidrs());
      r.limits_ref = request->limits_ref();
      r.store_bodies = request->store_bodies();
      CreatedKey created = deps_.admin.CreateApiKey(
          std::move(r), MakeAuditEntry(*context, "create_api_key", "", *request));
      response->set_api_key(std::move(created.api_key));
      Fill(created.record, response->mutable_key());
      log::Info("auth", "API key created",
                {{"api_key_id", created.record.id}, {"user_id", created.record.user_id}});
    });
  }

  grpc::ServerUnaryReactor* ListApiKeys(grpc::CallbackServerContext* context,
                                        const pb::ListApiKeysRequest* request,
                                        pb::ListApiKeysResponse* response) override {
    return OnWorker(context, "ListApiKeys", [=, this] {
      for (const auto& k : deps_.admin.ListApiKeys(request->user_id(), request->include_revoked()))
        Fill(k, response->add_keys());
    });
  }

  grpc::ServerUnaryReactor* UpdateApiKey(grpc::CallbackServerContext* context,
                                         const pb::UpdateApiKeyRequest* request,
                                         pb::UpdateApiKeyResponse* response) override {
    return OnWorker(context, "UpdateApiKey", [=, this] {
      ApiKeyPatch patch;
      if (request->has_name()) patch.name = request->name();
      if (request->status() != pb::KEY_STATUS_UNSPECIFIED) {
        patch.status = FromProto(request->status());
        if (!patch.status) throw Error(ErrorCode::kInvalidRequest, "unknown status");
      }
      if (request->has_expires_at()) patch.expires_at = request->expires_at();
      if (request->clear_allowed_models() && request->allowed_models_size() > 0)
        throw Error(ErrorCode::kInvalidRequest,
                    "give allowed_models or clear_allowed_models, not both");
      if (request->clear_allowed_cidrs() && request->allowed_cidrs_size() > 0)
        throw Error(ErrorCode::kInvalidRequest,
                    "give allowed_cidrs or clear_allowed_cidrs, not both");
      if (request->clear_allowed_models() || request->allowed_models_size() > 0)
        patch.allowed_models = Strings(request->allowed_models());
      if (request->clear_allowed_cidrs() || request->allowed_cidrs_size() > 0)
        patch.allowed_cidrs = Strings(request->allowed_cidrs());
      if (request->has_limits_ref()) patch.limits_ref = request->limits_ref();
      if (request->has_store_bodies()) patch.store_bodies = request->store_bodies();
      Fill(deps_.admin.UpdateApiKey(
               request->id(), std::move(patch),
               MakeAuditEntry(*context, "update_api_key",
                              "api_key:" + std::to_string(request->id()), *request)),
           response->mutable_key());
    });
  }

  grpc::ServerUnaryReactor* RevokeApiKey(grpc::CallbackServerContext* context,
                                         const pb::RevokeApiKeyRequest* request,
                                         pb::RevokeApiKeyResponse* response) override {
    return OnWorker(context, "RevokeApiKey", [=, this] {
      Fill(deps_.admin.RevokeApiKey(
               request->id(), MakeAuditEntry(*context, "revoke_api_key",
                                             "api_key:" + std::to_string(request->id()), *request)),
           response->mutable_key());
      log::Info("auth", "API key revoked", {{"api_key_id", request->id()}});
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
  template <typename Work>
  grpc::ServerUnaryReactor* OnWorker(grpc::CallbackServerContext* context, const char* rpc,
                                     Work work) {
    return RunAdminCall(context, deps_.workers, "auth", rpc, std::move(work));
  }

  AdminServiceDeps deps_;
};

}  // namespace

AuthService MakeAuthService(AuthServiceDeps deps) {
  auto metrics = std::make_shared<Metrics>(deps.registry);
  auto hub = std::make_unique<Hub>(deps.cache, deps.heartbeat, metrics);
  AuthService out;
  out.service = std::make_unique<AuthServiceImpl>(deps, metrics, *hub);
  out.hub = std::move(hub);
  return out;
}

std::unique_ptr<grpc::Service> MakeAuthAdminService(AdminServiceDeps deps) {
  return std::make_unique<AuthAdminServiceImpl>(std::move(deps));
}

}  // namespace tollgate::auth
