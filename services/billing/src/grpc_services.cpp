#include "src/grpc_services.h"

#include <algorithm>
#include <random>
#include <string>
#include <utility>

#include "tollgate/admin_call.h"
#include "tollgate/audit_grpc.h"
#include "tollgate/civil_date.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/log.h"
#include "tollgate/worker_call.h"

namespace tollgate::billing {
namespace {

namespace pb = ::tollgate::billing::v1;

// The data path's counterpart of RunAdminCall (no admin token; `work` returns
// the status): runs `work` on the worker pool (it may block on the database)
// and finishes the call from there; what it throws is answered by ExceptionToGrpcStatus.
template <typename Work>
grpc::ServerUnaryReactor* OnWorker(grpc::CallbackServerContext* context, WorkerPool& workers,
                                   const char* rpc, Work work) {
  auto* reactor = context->DefaultReactor();
  PostOrRefuse(workers, reactor, "billing", [reactor, rpc, work = std::move(work)]() mutable {
    grpc::Status status = grpc::Status::OK;
    try {
      status = work();
    } catch (...) {
      status = ExceptionToGrpcStatus(std::current_exception(), "billing", rpc);
    }
    reactor->Finish(status);
  });
  return reactor;
}

void Fill(const PriceRecord& p, pb::Price* out) {
  out->set_id(p.id);
  out->set_model(p.model);
  out->set_provider(p.provider);
  out->set_input_micros_per_mtok(p.rates.input_micros_per_mtok);
  out->set_output_micros_per_mtok(p.rates.output_micros_per_mtok);
  out->set_cached_input_micros_per_mtok(p.rates.cached_input_micros_per_mtok);
  out->set_cache_write_micros_per_mtok(p.rates.cache_write_micros_per_mtok);
  out->set_effective_from_ms(p.effective_from_ms);
  for (const auto& image : p.rates.images) {
    auto* row = out->add_image_prices();
    row->set_size(image.size);
    row->set_quality(image.quality);
    row->set_micros_per_image(image.micros_per_image);
  }
  out->set_audio_micros_per_minute(p.rates.audio_micros_per_minute);
  out->set_micros_per_mchar(p.rates.micros_per_mchar);
}

void Fill(const Account& a, pb::Account* out) {
  out->set_user_id(a.user_id);
  out->set_balance_micros(a.balance_micros);
  out->set_credit_limit_micros(a.credit_limit_micros);
  out->set_held_micros(a.held_micros);
  out->set_available_micros(a.available_micros());
  out->set_total_top_ups_micros(a.total_top_ups_micros);
  out->set_total_cost_micros(a.total_cost_micros);
  out->set_multiplier_ppm(a.multiplier_ppm);
}

void Fill(const ServiceTierMultiplier& m, pb::ServiceTierMultiplier* out) {
  out->set_tier(m.tier);
  out->set_multiplier_ppm(m.multiplier_ppm);
}

void Fill(const ReportRow& r, pb::UsageReportRow* out) {
  if (r.day) out->set_day(FormatDay(DayFromNumber(*r.day)));
  if (r.user_id) out->set_user_id(*r.user_id);
  if (r.api_key_id) out->set_api_key_id(*r.api_key_id);
  if (r.model) out->set_model(*r.model);
  out->set_requests(r.requests);
  out->set_prompt_tokens(r.tokens.prompt);
  out->set_completion_tokens(r.tokens.completion);
  out->set_cached_tokens(r.tokens.cached);
  out->set_cache_write_tokens(r.tokens.cache_write);
  out->set_cost_micros(r.cost_micros);
}

UsageInput FromProto(const pb::UsageRecord& r) {
  UsageInput u;
  u.request_id = r.request_id();
  u.user_id = r.user_id();
  u.api_key_id = r.api_key_id();
  u.model = r.model();
  u.upstream_model = r.upstream_model();
  u.upstream_key_id = r.upstream_key_id();
  u.provider = r.provider();
  u.hold_id = r.hold_id();
  u.budget_id = r.budget_id();
  u.tokens = {r.prompt_tokens(), r.completion_tokens(), r.cached_tokens(), r.cache_write_tokens()};
  u.usage_estimated = r.usage_estimated();
  u.streamed = r.streamed();
  u.service_tier = r.service_tier();
  u.status = r.status();
  u.latency_ms = r.latency_ms();
  u.client_disconnected = r.client_disconnected();
  u.attempts = r.attempts();
  u.client_ip = r.client_ip();
  u.started_at_ms = r.started_at_ms();
  u.finished_at_ms = r.finished_at_ms();
  u.request_body = r.request_body();
  u.response_body = r.response_body();
  u.bodies_truncated = r.bodies_truncated();
  u.endpoint_kind = r.endpoint_kind();
  u.units = {r.images(), r.image_size(), r.image_quality(), r.audio_milliseconds(), r.characters()};
  return u;
}

void Fill(const RecordRow& row, pb::StoredUsageRecord* out) {
  const UsageInput& u = row.record;
  pb::UsageRecord* r = out->mutable_record();
  r->set_request_id(u.request_id);
  r->set_user_id(u.user_id);
  r->set_api_key_id(u.api_key_id);
  r->set_model(u.model);
  r->set_upstream_model(u.upstream_model);
  r->set_upstream_key_id(u.upstream_key_id);
  r->set_provider(u.provider);
  r->set_hold_id(u.hold_id);
  r->set_prompt_tokens(u.tokens.prompt);
  r->set_completion_tokens(u.tokens.completion);
  r->set_cached_tokens(u.tokens.cached);
  r->set_cache_write_tokens(u.tokens.cache_write);
  r->set_usage_estimated(u.usage_estimated);
  r->set_streamed(u.streamed);
  r->set_service_tier(u.service_tier);
  r->set_endpoint_kind(u.endpoint_kind);
  r->set_images(u.units.images);
  r->set_image_size(u.units.image_size);
  r->set_image_quality(u.units.image_quality);
  r->set_audio_milliseconds(u.units.audio_ms);
  r->set_characters(u.units.characters);
  r->set_status(u.status);
  r->set_latency_ms(u.latency_ms);
  r->set_client_disconnected(u.client_disconnected);
  r->set_attempts(u.attempts);
  r->set_client_ip(u.client_ip);
  r->set_started_at_ms(u.started_at_ms);
  r->set_finished_at_ms(u.finished_at_ms);
  r->set_request_body(u.request_body);
  r->set_response_body(u.response_body);
  r->set_bodies_truncated(u.bodies_truncated);
  out->set_cost_micros(row.cost_micros);
  out->set_has_bodies(row.has_bodies);
}

class BillingServiceImpl final : public pb::BillingService::CallbackService {
 public:
  BillingServiceImpl(Billing& billing, Ingestor& ingestor, WorkerPool& workers,
                     BillingMetrics& metrics)
      : billing_(billing), ingestor_(ingestor), workers_(workers), metrics_(metrics) {}

  grpc::ServerUnaryReactor* Hold(grpc::CallbackServerContext* context,
                                 const pb::HoldRequest* request,
                                 pb::HoldResponse* response) override {
    HoldInput in;
    in.request_id = request->request_id();
    in.user_id = request->user_id();
    in.api_key_id = request->api_key_id();
    in.model = request->model();
    in.provider = request->provider();
    in.estimated_prompt_tokens = request->estimated_prompt_tokens();
    in.max_completion_tokens = request->max_completion_tokens();
    in.service_tier = request->service_tier();
    in.units.images = request->images();
    in.units.audio_ms = request->audio_milliseconds();
    in.units.characters = request->characters();
    in.min_amount_micros = std::max<int64_t>(0, request->min_amount_micros());
    auto answer = [this, response](const HoldDecision& d) {
      metrics_.CountHold(d.granted);
      if (!d.granted)
        return ToGrpcStatus(ErrorCode::kInsufficientQuota,
                            "You exceeded your current quota, please check your plan and billing "
                            "details.");
      response->set_hold_id(d.hold_id);
      response->set_amount_micros(d.amount_micros);
      response->set_expires_at_ms(d.expires_at_ms);
      return grpc::Status::OK;
    };
    // Decided in memory, here on gRPC's thread; only what needs the database (a user's first
    // hold, a price not cached) goes to a worker.
    try {
      if (auto d = billing_.TryHold(in)) {
        auto* reactor = context->DefaultReactor();
        reactor->Finish(answer(*d));
        return reactor;
      }
    } catch (const Error& e) {
      metrics_.CountHoldError();
      auto* reactor = context->DefaultReactor();
      reactor->Finish(ToGrpcStatus(e));
      return reactor;
    }
    return OnWorker(context, workers_, "Hold", [this, in, answer] {
      HoldDecision d;
      try {
        d = billing_.Hold(in);
      } catch (...) {
        metrics_.CountHoldError();
        throw;
      }
      return answer(d);
    });
  }

  grpc::ServerUnaryReactor* ReleaseHold(grpc::CallbackServerContext* context,
                                        const pb::ReleaseHoldRequest* request,
                                        pb::ReleaseHoldResponse*) override {
    return OnWorker(context, workers_, "ReleaseHold", [=, this] {
      billing_.Release(request->hold_id());
      return grpc::Status::OK;
    });
  }

  grpc::ServerUnaryReactor* RecordUsage(grpc::CallbackServerContext* context,
                                        const pb::RecordUsageRequest* request,
                                        pb::RecordUsageResponse* response) override {
    auto* reactor = context->DefaultReactor();
    std::vector<UsageInput> records;
    records.reserve(request->records_size());
    for (const auto& r : request->records()) {
      if (r.request_id().empty()) {
        reactor->Finish(
            ToGrpcStatus(ErrorCode::kInvalidRequest, "every usage record needs a request_id"));
        return reactor;
      }
      records.push_back(FromProto(r));
    }
    if (records.empty()) {
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    // Answered from the writer thread once the batch's transaction committed.
    ingestor_.Submit(std::move(records), [this, reactor, response](IngestReply reply) {
      if (!reply.ok) {
        metrics_.CountRecordUsageError();
        reactor->Finish(ExceptionToGrpcStatus(reply.error, "billing", "RecordUsage"));
        return;
      }
      const auto recorded = std::count(reply.stored.begin(), reply.stored.end(), true);
      metrics_.CountRecords(recorded, reply.stored.size() - recorded);
      response->set_recorded(static_cast<int32_t>(recorded));
      response->set_duplicates(static_cast<int32_t>(reply.stored.size() - recorded));
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* GetAccount(grpc::CallbackServerContext* context,
                                       const pb::GetAccountRequest* request,
                                       pb::GetAccountResponse* response) override {
    return OnWorker(context, workers_, "GetAccount", [=, this] {
      Fill(billing_.GetBalance(request->user_id()), response->mutable_account());
      return grpc::Status::OK;
    });
  }

  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const pb::GetUsageRequest* request,
                                     pb::GetUsageResponse* response) override {
    return OnWorker(context, workers_, "GetUsage", [=, this] {
      for (const auto& r : billing_.UserUsage(request->user_id(), request->api_key_id(),
                                              request->from_day(), request->to_day()))
        Fill(r, response->add_rows());
      return grpc::Status::OK;
    });
  }

  grpc::ServerUnaryReactor* Budget(grpc::CallbackServerContext* context,
                                   const pb::BudgetRequest* request,
                                   pb::BudgetResponse* response) override {
    // On a worker: a user's first budget loads its account, a stale price snapshot the prices.
    return OnWorker(context, workers_, "Budget", [=, this] {
      for (const auto& r : request->returns()) {
        billing_.ReturnBudget(r.budget_id(), r.spent_micros());
        metrics_.CountBudget("returned");
      }
      std::vector<BudgetAsk> asks;
      asks.reserve(request->asks_size());
      for (const auto& a : request->asks())
        asks.push_back({a.user_id(), a.budget_id(), a.micros(), a.min_micros(),
                        a.budget_id() != 0 ? a.left_micros() : -1});
      for (const BudgetGrant& g : billing_.Budgets(asks)) {
        auto* out = response->add_grants();
        out->set_found(g.found);
        out->set_budget_id(g.budget_id);
        out->set_added_micros(g.added_micros);
        out->set_amount_micros(g.amount_micros);
        out->set_multiplier_ppm(g.multiplier_ppm);
        out->set_ttl_ms(g.ttl_ms);
        metrics_.CountBudget(g.added_micros > 0 ? "granted" : "refused");
      }
      response->set_incarnation(incarnation_);
      PriceSnapshot snapshot = billing_.Prices();
      if (snapshot.version != request->price_version()) {
        auto* prices = response->mutable_prices();
        prices->set_version(snapshot.version);
        for (const auto& p : snapshot.prices) Fill(p, prices->add_prices());
        for (const auto& [tier, ppm] : snapshot.tiers)
          Fill(ServiceTierMultiplier{tier, ppm}, prices->add_tier_multipliers());
      }
      return grpc::Status::OK;
    });
  }

 private:
  // Random per process: edges drop the budgets of an earlier one.
  const uint64_t incarnation_ = [] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32 | rd()) | 1;
  }();
  Billing& billing_;
  Ingestor& ingestor_;
  WorkerPool& workers_;
  BillingMetrics& metrics_;
};

class BillingAdminServiceImpl final : public pb::BillingAdminService::CallbackService {
 public:
  explicit BillingAdminServiceImpl(AdminServiceDeps deps) : deps_(std::move(deps)) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const pb::GetStatusRequest*,
                                      pb::GetStatusResponse* response) override {
    return RunStatusCall(context, [&] { deps_.status(response); });
  }

  grpc::ServerUnaryReactor* SetPrice(grpc::CallbackServerContext* context,
                                     const pb::SetPriceRequest* request,
                                     pb::SetPriceResponse* response) override {
    return Admin(context, "SetPrice", [=, this, actor = AuditActor(*context)] {
      NewPrice p;
      p.model = request->model();
      p.provider = request->provider();
      p.input_micros_per_mtok = request->input_micros_per_mtok();
      p.output_micros_per_mtok = request->output_micros_per_mtok();
      if (request->has_cached_input_micros_per_mtok())
        p.cached_input_micros_per_mtok = request->cached_input_micros_per_mtok();
      if (request->has_cache_write_micros_per_mtok())
        p.cache_write_micros_per_mtok = request->cache_write_micros_per_mtok();
      p.effective_from_ms = request->effective_from_ms();
      p.image_prices.assign(request->image_prices().begin(), request->image_prices().end());
      p.audio_micros_per_minute = request->audio_micros_per_minute();
      p.micros_per_mchar = request->micros_per_mchar();
      Fill(deps_.billing.SetPrice(actor, p), response->mutable_price());
    });
  }

  grpc::ServerUnaryReactor* ListPrices(grpc::CallbackServerContext* context,
                                       const pb::ListPricesRequest* request,
                                       pb::ListPricesResponse* response) override {
    return Admin(context, "ListPrices", [=, this] {
      for (const auto& p : deps_.billing.ListPrices(request->model()))
        Fill(p, response->add_prices());
    });
  }

  grpc::ServerUnaryReactor* SetMultiplier(grpc::CallbackServerContext* context,
                                          const pb::SetMultiplierRequest* request,
                                          pb::SetMultiplierResponse*) override {
    return Admin(context, "SetMultiplier", [=, this, actor = AuditActor(*context)] {
      deps_.billing.SetMultiplier(actor, request->user_id(), request->multiplier_ppm());
    });
  }

  grpc::ServerUnaryReactor* SetServiceTierMultiplier(
      grpc::CallbackServerContext* context, const pb::SetServiceTierMultiplierRequest* request,
      pb::SetServiceTierMultiplierResponse* response) override {
    return Admin(context, "SetServiceTierMultiplier", [=, this, actor = AuditActor(*context)] {
      Fill(
          deps_.billing.SetServiceTierMultiplier(actor, request->tier(), request->multiplier_ppm()),
          response->mutable_multiplier());
    });
  }

  grpc::ServerUnaryReactor* ListServiceTierMultipliers(
      grpc::CallbackServerContext* context, const pb::ListServiceTierMultipliersRequest*,
      pb::ListServiceTierMultipliersResponse* response) override {
    return Admin(context, "ListServiceTierMultipliers", [=, this] {
      for (const auto& m : deps_.billing.ListServiceTierMultipliers())
        Fill(m, response->add_multipliers());
    });
  }

  grpc::ServerUnaryReactor* CreateAccount(grpc::CallbackServerContext* context,
                                          const pb::CreateAccountRequest* request,
                                          pb::CreateAccountResponse* response) override {
    return Admin(context, "CreateAccount", [=, this, actor = AuditActor(*context)] {
      Fill(deps_.billing.CreateAccount(actor, request->user_id(), request->credit_limit_micros()),
           response->mutable_account());
    });
  }

  grpc::ServerUnaryReactor* TopUp(grpc::CallbackServerContext* context,
                                  const pb::TopUpRequest* request,
                                  pb::TopUpResponse* response) override {
    return Admin(context, "TopUp", [=, this, actor = AuditActor(*context)] {
      Fill(
          deps_.billing.TopUp(actor, request->user_id(), request->amount_micros(), request->note()),
          response->mutable_account());
    });
  }

  grpc::ServerUnaryReactor* SetCreditLimit(grpc::CallbackServerContext* context,
                                           const pb::SetCreditLimitRequest* request,
                                           pb::SetCreditLimitResponse* response) override {
    return Admin(context, "SetCreditLimit", [=, this, actor = AuditActor(*context)] {
      Fill(deps_.billing.SetCreditLimit(actor, request->user_id(), request->credit_limit_micros()),
           response->mutable_account());
    });
  }

  grpc::ServerUnaryReactor* GetBalance(grpc::CallbackServerContext* context,
                                       const pb::GetBalanceRequest* request,
                                       pb::GetBalanceResponse* response) override {
    return Admin(context, "GetBalance", [=, this] {
      Fill(deps_.billing.GetBalance(request->user_id()), response->mutable_account());
    });
  }

  grpc::ServerUnaryReactor* UsageReport(grpc::CallbackServerContext* context,
                                        const pb::UsageReportRequest* request,
                                        pb::UsageReportResponse* response) override {
    return Admin(context, "UsageReport", [=, this] {
      std::vector<Dimension> group_by;
      for (int d : request->group_by()) {
        switch (static_cast<pb::ReportDimension>(d)) {
          case pb::REPORT_DIMENSION_USER:
            group_by.push_back(Dimension::kUser);
            break;
          case pb::REPORT_DIMENSION_KEY:
            group_by.push_back(Dimension::kKey);
            break;
          case pb::REPORT_DIMENSION_MODEL:
            group_by.push_back(Dimension::kModel);
            break;
          case pb::REPORT_DIMENSION_DAY:
            group_by.push_back(Dimension::kDay);
            break;
          default:
            throw Error(ErrorCode::kInvalidRequest, "group_by takes user, key, model and day");
        }
      }
      for (const auto& r :
           deps_.billing.UsageReport(request->from_day(), request->to_day(), std::move(group_by),
                                     request->user_id(), request->api_key_id()))
        Fill(r, response->add_rows());
    });
  }

  grpc::ServerUnaryReactor* ListUsageRecords(grpc::CallbackServerContext* context,
                                             const pb::ListUsageRecordsRequest* request,
                                             pb::ListUsageRecordsResponse* response) override {
    return Admin(context, "ListUsageRecords", [=, this] {
      RecordQuery q;
      q.user_id = request->user_id();
      q.api_key_id = request->api_key_id();
      q.request_id = request->request_id();
      q.before_ms = request->before_ms();
      q.limit = request->limit();
      q.include_bodies = request->include_bodies();
      for (const auto& row : deps_.billing.ListRecords(std::move(q)))
        Fill(row, response->add_records());
    });
  }

  grpc::ServerUnaryReactor* ListAuditLog(grpc::CallbackServerContext* context,
                                         const pb::ListAuditLogRequest* request,
                                         pb::ListAuditLogResponse* response) override {
    return Admin(context, "ListAuditLog", [=, this] {
      for (const auto& e : deps_.billing.ListAuditLog(request->limit()))
        FillAuditEntry(e, response->add_entries());
    });
  }

 private:
  // Runs `work` on the workers (the server admitted only the admin identity, internal_auth.h).
  template <typename Work>
  grpc::ServerUnaryReactor* Admin(grpc::CallbackServerContext* context, const char* rpc,
                                  Work work) {
    return RunAdminCall(context, deps_.workers, "billing", rpc, std::move(work));
  }

  AdminServiceDeps deps_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeBillingService(Billing& billing, Ingestor& ingestor,
                                                  WorkerPool& workers, BillingMetrics& metrics) {
  return std::make_unique<BillingServiceImpl>(billing, ingestor, workers, metrics);
}

std::unique_ptr<grpc::Service> MakeBillingAdminService(AdminServiceDeps deps) {
  return std::make_unique<BillingAdminServiceImpl>(std::move(deps));
}

}  // namespace tollgate::billing
