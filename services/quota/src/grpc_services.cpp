#include "src/grpc_services.h"

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <array>
#include <string>
#include <thread>

#include "tollgate/admin_call.h"
#include "tollgate/audit_grpc.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/log.h"
#include "tollgate/worker_call.h"

namespace tollgate::quota {
namespace {

namespace pb = ::tollgate::quota::v1;

pb::LimitKind ToProto(LimitKind kind) {
  switch (kind) {
    case LimitKind::kRpm:
      return pb::LIMIT_KIND_RPM;
    case LimitKind::kTpm:
      return pb::LIMIT_KIND_TPM;
    case LimitKind::kMonthly:
      return pb::LIMIT_KIND_MONTHLY;
    case LimitKind::kDaily:
      return pb::LIMIT_KIND_DAILY;
  }
  return pb::LIMIT_KIND_UNSPECIFIED;
}

pb::SubjectKind ToProto(SubjectKind kind) {
  switch (kind) {
    case SubjectKind::kKey:
      return pb::SUBJECT_KIND_KEY;
    case SubjectKind::kUser:
      return pb::SUBJECT_KIND_USER;
    case SubjectKind::kIp:
      return pb::SUBJECT_KIND_IP;
  }
  return pb::SUBJECT_KIND_UNSPECIFIED;
}

SubjectKind FromProto(pb::SubjectKind kind, const std::string& subject) {
  if (subject.empty() || subject.size() > 256)
    throw Error(ErrorCode::kInvalidRequest,
                "subject must be 1 to 256 characters (a key id, user id or IP address)");
  switch (kind) {
    case pb::SUBJECT_KIND_KEY:
      return SubjectKind::kKey;
    case pb::SUBJECT_KIND_USER:
      return SubjectKind::kUser;
    case pb::SUBJECT_KIND_IP:
      return SubjectKind::kIp;
    default:
      throw Error(ErrorCode::kInvalidRequest,
                  "subject_kind must be SUBJECT_KIND_KEY, SUBJECT_KIND_USER or "
                  "SUBJECT_KIND_IP");
  }
}

void Fill(const WindowState& w, pb::RateLimitWindow* out) {
  out->set_limit(w.limit);
  out->set_remaining(w.remaining);
  out->set_reset_ms(w.reset.count());
}

void Fill(SubjectKind kind, const std::string& subject, const EffectivePolicy& p, pb::Policy* out) {
  out->set_subject_kind(ToProto(kind));
  out->set_subject(subject);
  out->set_rpm(p.limits.rpm);
  out->set_tpm(p.limits.tpm);
  out->set_monthly_tokens(p.limits.monthly_tokens);
  out->set_daily_tokens(p.limits.daily_tokens);
  out->set_overridden(p.overridden);
}

struct QuotaMetrics {
  explicit QuotaMetrics(prometheus::Registry& registry) {
    auto& admissions = prometheus::BuildCounter()
                           .Name("tollgate_quota_admissions_total")
                           .Help("Admit answers by result: allowed, or the limit that denied")
                           .Register(registry);
    allowed = &admissions.Add({{"result", "allowed"}});
    for (LimitKind k : {LimitKind::kRpm, LimitKind::kTpm, LimitKind::kMonthly, LimitKind::kDaily})
      denied[static_cast<size_t>(k)] = &admissions.Add({{"result", LimitName(k)}});
    failed = &admissions.Add({{"result", "error"}});
    auto& settlements = prometheus::BuildCounter()
                            .Name("tollgate_quota_settlements_total")
                            .Help("Settlements committed: new, or duplicates of a settled request")
                            .Register(registry);
    settled_new = &settlements.Add({{"result", "new"}});
    settled_duplicate = &settlements.Add({{"result", "duplicate"}});
    leased = &prometheus::BuildCounter()
                  .Name("tollgate_quota_leases_total")
                  .Help("Leases granted to edges (capacity admitted from the edges' memory)")
                  .Register(registry)
                  .Add({});
  }
  prometheus::Counter* allowed = nullptr;
  std::array<prometheus::Counter*, 4> denied{};
  prometheus::Counter* failed = nullptr;
  prometheus::Counter* settled_new = nullptr;
  prometheus::Counter* settled_duplicate = nullptr;
  prometheus::Counter* leased = nullptr;
};

class QuotaServiceImpl final : public pb::QuotaService::CallbackService {
 public:
  explicit QuotaServiceImpl(QuotaServiceDeps deps) : deps_(deps), metrics_(deps.registry) {}

  grpc::ServerUnaryReactor* Admit(grpc::CallbackServerContext* context,
                                  const pb::AdmitRequest* request,
                                  pb::AdmitResponse* response) override {
    auto* reactor = context->DefaultReactor();
    PostOrRefuse(deps_.workers, reactor, "quota", [this, reactor, request, response] {
      // Just after a restart, leases of the previous incarnation may still admit at the edges.
      const auto quiet = deps_.leases_settled_at - std::chrono::steady_clock::now();
      if (quiet > std::chrono::steady_clock::duration::zero()) std::this_thread::sleep_for(quiet);
      AdmitInput in;
      in.request_id = request->request_id();
      in.subjects = {request->api_key_id(), request->user_id(), request->client_ip()};
      in.estimated_tokens = request->estimated_tokens();
      AdmitDecision d;
      try {
        d = deps_.limiter.Admit(in);
      } catch (...) {
        metrics_.failed->Increment();
        reactor->Finish(ExceptionToGrpcStatus(std::current_exception(), "quota", "Admit"));
        return;
      }
      if (d.denial)
        metrics_.denied[static_cast<size_t>(d.denial->limit)]->Increment();
      else
        metrics_.allowed->Increment();
      response->set_allowed(!d.denial);
      response->set_reservation_id(d.reservation_id);
      Fill(d.requests, response->mutable_requests());
      Fill(d.tokens, response->mutable_tokens());
      if (d.denial) {
        response->set_denied_limit(ToProto(d.denial->limit));
        response->set_denied_subject(ToProto(d.denial->subject));
        response->set_error_code(d.denial->insufficient_quota() ? "insufficient_quota"
                                                                : "rate_limit_exceeded");
        response->set_retry_after_ms(d.denial->retry_after.count());
        response->set_message(d.denial->message);
      }
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Settle(grpc::CallbackServerContext* context,
                                   const pb::SettleRequest* request, pb::SettleResponse*) override {
    auto* reactor = context->DefaultReactor();
    PostOrRefuse(deps_.workers, reactor, "quota", [this, reactor, request] {
      auto inputs = std::make_shared<std::vector<SettleInput>>();
      for (const auto& s : request->settlements()) {
        if (s.request_id().empty()) continue;  // nothing to be idempotent on
        inputs->push_back({s.request_id(),
                           s.reservation_id(),
                           s.actual_tokens(),
                           {s.api_key_id(), s.user_id(), s.client_ip()},
                           s.lease_estimate()});
      }
      std::shared_ptr<std::vector<SettledRequest>> prepared;
      try {
        prepared =
            std::make_shared<std::vector<SettledRequest>>(deps_.limiter.PrepareSettle(*inputs));
      } catch (...) {
        reactor->Finish(ExceptionToGrpcStatus(std::current_exception(), "quota", "Settle"));
        return;
      }
      auto batch = *prepared;
      deps_.committer.Submit(
          std::move(batch), [this, reactor, inputs, prepared](const std::vector<bool>& fresh,
                                                              std::exception_ptr error) {
            if (error) {
              reactor->Finish(ExceptionToGrpcStatus(error, "quota", "Settle commit"));
              return;
            }
            deps_.limiter.ApplySettled(*inputs, *prepared, fresh);
            for (bool f : fresh)
              (f ? metrics_.settled_new : metrics_.settled_duplicate)->Increment();
            reactor->Finish(grpc::Status::OK);
          });
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context,
                                  const pb::LeaseRequest* request,
                                  pb::LeaseResponse* response) override {
    auto* reactor = context->DefaultReactor();
    PostOrRefuse(deps_.workers, reactor, "quota", [this, reactor, request, response] {
      try {
        for (const auto& r : request->returns())
          deps_.limiter.ReturnLease({r.lease_id(), r.final(), r.unused_requests(),
                                     r.unused_tokens(), r.used_requests(), r.used_tokens()});
        const bool quiet = std::chrono::steady_clock::now() < deps_.leases_settled_at;
        for (const auto& a : request->asks()) {
          auto* out = response->add_grants();
          if (quiet) continue;
          LeaseGrant g = deps_.limiter.Lease({FromProto(a.subject_kind(), a.subject()), a.subject(),
                                              a.requests(), a.tokens(), a.min_tokens()});
          if (!g.granted) continue;
          out->set_granted(true);
          out->set_lease_id(g.lease_id);
          out->set_requests(g.requests);
          out->set_tokens(g.tokens);
          out->set_ttl_ms(g.ttl.count());
          Fill(g.requests_window, out->mutable_requests_window());
          Fill(g.tokens_window, out->mutable_tokens_window());
          metrics_.leased->Increment();
        }
        response->set_incarnation(deps_.limiter.incarnation());
        for (auto& id : deps_.limiter.RecalledLeases())
          response->add_recalled_lease_ids(std::move(id));
      } catch (...) {
        reactor->Finish(ExceptionToGrpcStatus(std::current_exception(), "quota", "Lease"));
        return;
      }
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const pb::ReleaseRequest* request,
                                    pb::ReleaseResponse*) override {
    auto* reactor = context->DefaultReactor();
    // Memory only; an unknown id (expired, settled, another replica's) is not an error.
    deps_.limiter.Release(request->reservation_id());
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  QuotaServiceDeps deps_;
  QuotaMetrics metrics_;
};

class QuotaAdminServiceImpl final : public pb::QuotaAdminService::CallbackService {
 public:
  explicit QuotaAdminServiceImpl(QuotaAdminDeps deps) : deps_(std::move(deps)) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const pb::GetStatusRequest*,
                                      pb::GetStatusResponse* response) override {
    return RunStatusCall(context, [&] { deps_.status(response); });
  }

  grpc::ServerUnaryReactor* SetPolicy(grpc::CallbackServerContext* context,
                                      const pb::SetPolicyRequest* request,
                                      pb::SetPolicyResponse* response) override {
    return OnWorker(context, "SetPolicy", [=, this] {
      PolicyOverride p;
      p.kind = FromProto(request->subject_kind(), request->subject());
      p.subject = request->subject();
      auto take = [](bool has, int64_t v, const char* name) -> std::optional<int64_t> {
        if (!has) return std::nullopt;
        if (v < 0)
          throw Error(ErrorCode::kInvalidRequest,
                      std::string(name) + " must be >= 0 (0: unlimited)");
        return v;
      };
      p.rpm = take(request->has_rpm(), request->rpm(), "rpm");
      p.tpm = take(request->has_tpm(), request->tpm(), "tpm");
      p.monthly_tokens =
          take(request->has_monthly_tokens(), request->monthly_tokens(), "monthly_tokens");
      p.daily_tokens = take(request->has_daily_tokens(), request->daily_tokens(), "daily_tokens");
      if (p.kind == SubjectKind::kUser && (p.rpm || p.tpm))
        throw Error(ErrorCode::kInvalidRequest,
                    "users have monthly and daily token quotas only; rate limits apply "
                    "per key and per IP");
      if (p.kind == SubjectKind::kIp && (p.monthly_tokens || p.daily_tokens))
        throw Error(ErrorCode::kInvalidRequest, "client IPs have rate limits (rpm, tpm) only");
      deps_.repo.UpsertPolicy(
          p, MakeAuditEntry(*context, "set_policy", PolicyTarget(p.kind, p.subject), *request));
      deps_.limiter.PutPolicy(p);
      Fill(p.kind, p.subject, deps_.limiter.Policy(p.kind, p.subject), response->mutable_policy());
    });
  }

  grpc::ServerUnaryReactor* GetPolicy(grpc::CallbackServerContext* context,
                                      const pb::GetPolicyRequest* request,
                                      pb::GetPolicyResponse* response) override {
    return OnWorker(context, "GetPolicy", [=, this] {
      SubjectKind kind = FromProto(request->subject_kind(), request->subject());
      Fill(kind, request->subject(), deps_.limiter.Policy(kind, request->subject()),
           response->mutable_policy());
    });
  }

  grpc::ServerUnaryReactor* DeletePolicy(grpc::CallbackServerContext* context,
                                         const pb::DeletePolicyRequest* request,
                                         pb::DeletePolicyResponse*) override {
    return OnWorker(context, "DeletePolicy", [=, this] {
      SubjectKind kind = FromProto(request->subject_kind(), request->subject());
      if (!deps_.repo.DeletePolicy(
              kind, request->subject(),
              MakeAuditEntry(*context, "delete_policy", PolicyTarget(kind, request->subject()),
                             *request)))
        throw Error(ErrorCode::kNotFound, "no policy override for this subject");
      deps_.limiter.RemovePolicy(kind, request->subject());
    });
  }

  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const pb::GetUsageRequest* request,
                                     pb::GetUsageResponse* response) override {
    return OnWorker(context, "GetUsage", [=, this] {
      SubjectKind kind = FromProto(request->subject_kind(), request->subject());
      UsageSnapshot u = deps_.limiter.Usage(kind, request->subject());
      Fill(kind, request->subject(), u.policy, response->mutable_policy());
      response->set_monthly_tokens(u.monthly_tokens);
      response->set_daily_tokens(u.daily_tokens);
      response->set_reserved_tokens(u.reserved_tokens);
      response->set_window_requests(u.window_requests);
      response->set_window_tokens(u.window_tokens);
    });
  }

  grpc::ServerUnaryReactor* ListAuditLog(grpc::CallbackServerContext* context,
                                         const pb::ListAuditLogRequest* request,
                                         pb::ListAuditLogResponse* response) override {
    return OnWorker(context, "ListAuditLog", [=, this] {
      for (const auto& e : deps_.repo.ListAudit(AuditLimit(request->limit())))
        FillAuditEntry(e, response->add_entries());
    });
  }

 private:
  // "policy:key:<subject>", "policy:user:<subject>", "policy:ip:<subject>".
  static std::string PolicyTarget(SubjectKind kind, const std::string& subject) {
    return std::string("policy:") + SubjectName(kind) + ":" + subject;
  }

  template <typename Work>
  grpc::ServerUnaryReactor* OnWorker(grpc::CallbackServerContext* context, const char* rpc,
                                     Work work) {
    return RunAdminCall(context, deps_.workers, "quota", rpc, std::move(work));
  }

  QuotaAdminDeps deps_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeQuotaService(QuotaServiceDeps deps) {
  return std::make_unique<QuotaServiceImpl>(deps);
}

std::unique_ptr<grpc::Service> MakeQuotaAdminService(QuotaAdminDeps deps) {
  return std::make_unique<QuotaAdminServiceImpl>(std::move(deps));
}

}  // namespace tollgate::quota
