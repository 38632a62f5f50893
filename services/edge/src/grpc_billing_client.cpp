#include "src/grpc_billing_client.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "src/grpc_call.h"
#include "src/spool.h"
#include "tollgate/billing/cost.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/log.h"
#include "tollgate/saturating.h"

namespace tollgate::edge {
namespace {

namespace pb = tollgate::billing::v1;

// auth's int64 ids travel as decimal strings in the Principal; 0: not a billable id.
int64_t ParseId(const std::string& text) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  return ec == std::errc() && end == text.data() + text.size() && v > 0 ? v : 0;
}

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A hold from a budget: "b<budget id>.<worst case>".
struct BudgetHold {
  int64_t budget_id = 0;
  int64_t worst = 0;
};

std::optional<BudgetHold> ParseBudgetHold(const std::string& id) {
  if (id.size() < 4 || id[0] != 'b') return std::nullopt;
  const auto dot = id.find('.');
  if (dot == std::string::npos) return std::nullopt;
  BudgetHold h;
  h.budget_id = ParseId(id.substr(1, dot - 1));
  auto [end, ec] = std::from_chars(id.data() + dot + 1, id.data() + id.size(), h.worst);
  if (h.budget_id == 0 || ec != std::errc() || end != id.data() + id.size() || h.worst < 0)
    return std::nullopt;
  return h;
}

// What billing prices with, as it sent it (BudgetResponse.prices).
struct Pricing {
  std::string version;
  std::unordered_map<std::string, std::vector<billing::PriceRecord>> by_model;
  std::map<std::string, int64_t> tiers;
};

billing::PriceRecord FromProto(const pb::Price& p) {
  billing::PriceRecord r;
  r.id = p.id();
  r.model = p.model();
  r.provider = p.provider();
  r.rates.input_micros_per_mtok = p.input_micros_per_mtok();
  r.rates.output_micros_per_mtok = p.output_micros_per_mtok();
  r.rates.cached_input_micros_per_mtok = p.cached_input_micros_per_mtok();
  r.rates.cache_write_micros_per_mtok = p.cache_write_micros_per_mtok();
  for (const auto& image : p.image_prices())
    r.rates.images.push_back({image.size(), image.quality(), image.micros_per_image()});
  r.rates.audio_micros_per_minute = p.audio_micros_per_minute();
  r.rates.micros_per_mchar = p.micros_per_mchar();
  r.effective_from_ms = p.effective_from_ms();
  return r;
}

// The rates billing applies to `model` now (the default price: the edge sends no provider).
billing::Rates RatesOf(const Pricing& pricing, const std::string& model, int64_t now_ms) {
  auto it = pricing.by_model.find(model);
  if (it == pricing.by_model.end()) return {};  // unpriced: costs nothing
  if (auto price = billing::SelectPrice(it->second, "", now_ms)) return price->rates;
  return {};
}

constexpr const char* kUnavailable =
    "The billing service is unavailable, so the request was not admitted. Please retry shortly.";

}  // namespace

struct GrpcBillingClient::Impl {
  explicit Impl(GrpcBillingClientOptions opts)
      : options(std::move(opts)), spool(SpoolOptions{options.spool_dir, options.spool_max_bytes}) {
    channel = OpenChannel(options.target);
    stub = pb::BillingService::NewStub(channel);
    if (options.registry) {
      auto& records_family = prometheus::BuildCounter()
                                 .Name("tollgate_edge_billing_records_total")
                                 .Help("Usage records on their way to billing, by step")
                                 .Register(*options.registry);
      spooled_counter = &records_family.Add({{"result", "spooled"}});
      delivered_counter = &records_family.Add({{"result", "delivered"}});
      dropped_counter = &records_family.Add({{"result", "dropped"}});
      auto& spool_family = prometheus::BuildGauge()
                               .Name("tollgate_edge_billing_spool")
                               .Help(
                                   "The edge's usage record spool: records and bytes on disk, "
                                   "and its bound in bytes")
                               .Register(*options.registry);
      spool_records_gauge = &spool_family.Add({{"what", "records"}});
      spool_bytes_gauge = &spool_family.Add({{"what", "bytes"}});
      spool_family.Add({{"what", "max_bytes"}}).Set(static_cast<double>(options.spool_max_bytes));
      auto& holds_family = prometheus::BuildCounter()
                               .Name("tollgate_edge_billing_holds_total")
                               .Help("Billing holds asked for by the edge, by result")
                               .Register(*options.registry);
      holds_granted = &holds_family.Add({{"result", "granted"}});
      holds_refused = &holds_family.Add({{"result", "insufficient_quota"}});
      holds_unavailable = &holds_family.Add({{"result", "unavailable"}});
      holds_budget = &holds_family.Add({{"result", "budget"}});
      auto& budget_calls = prometheus::BuildCounter()
                               .Name("tollgate_edge_billing_budget_calls_total")
                               .Help(
                                   "Budget calls to billing (asks, refills and returns of every "
                                   "user in one), by result")
                               .Register(*options.registry);
      budget_calls_ok = &budget_calls.Add({{"result", "ok"}});
      budget_calls_failed = &budget_calls.Add({{"result", "failed"}});
      budgets_gauge = &prometheus::BuildGauge()
                           .Name("tollgate_edge_billing_budgets")
                           .Help(
                               "Budgets (money of a user billing granted in advance) the edge "
                               "holds open for spending")
                           .Register(*options.registry)
                           .Add({});
      UpdateGauges();
    }
    sender = std::thread([this] { SendLoop(); });
    if (options.budgets) budgeter = std::thread([this] { BudgetLoop(); });
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    if (crashed.load()) {
      if (sender.joinable()) sender.join();
      if (budgeter.joinable()) budgeter.join();
      calls.Drain();
      return;
    }
    {
      // What is queued gets one bounded chance to reach billing, so a clean stop normally
      // leaves an empty spool; whatever is left is delivered by the next start.
      std::unique_lock lock(mu);
      if (stopping) return;
      wake_sender = true;
      cv.notify_all();
      cv.wait_for(lock, options.timeout,
                  [&] { return failing || (!batch_in_flight && spool.records() == 0); });
      stopping = true;
    }
    {
      // Every budget goes back (with what was spent from it) in the budget loop's last call.
      std::lock_guard lock(budget_mu);
      budget_stopping = true;
    }
    budget_cv.notify_all();
    if (budgeter.joinable()) budgeter.join();
    calls.Stop();  // new calls are answered as unreachable from here on
    cv.notify_all();
    if (sender.joinable()) sender.join();
    calls.Drain();
  }

  void SimulateCrash() {
    crashed = true;
    calls.Stop();
    {
      std::lock_guard lock(mu);
      stopping = true;  // records already written stay in the spool, as after a SIGKILL
    }
    {
      std::lock_guard lock(budget_mu);
      budget_stopping = true;
    }
    cv.notify_all();
    budget_cv.notify_all();
    Shutdown();
  }

  // ---- Budgets ----------------------------------------------------------------------------------

  struct Budget {
    int64_t id = 0;
    int64_t user_id = 0;
    uint64_t incarnation = 0;
    int64_t granted = 0;  // added by billing in all
    int64_t left = 0;     // granted - worst cases in flight - costs of finished requests
    int64_t spent = 0;    // costs of finished requests, priced here
    int64_t used = 0;     // worst cases held since the last refill (the size of the next ask)
    int64_t full = 0;     // left just after the last refill
    std::chrono::steady_clock::time_point filled_at;  // the last refill's answer
    int64_t in_flight = 0;                            // requests held from it and not finished
    int64_t max_worst = 0;                            // the largest worst case held from it
    int64_t multiplier_ppm = billing::kMultiplierOne;
    bool open = true;  // spendable; closed ones are returned once nothing is in flight
    std::chrono::steady_clock::time_point use_until;
    std::chrono::steady_clock::time_point last_used;
    std::chrono::milliseconds ttl{0};
  };
  struct BudgetDemand {
    int64_t worst = 0;  // the largest worst case wanted (0: not priced yet)
    bool touched = true;
    bool asking = false;
    std::chrono::steady_clock::time_point next_ask;
    std::chrono::steady_clock::time_point since;
  };

  // Under budget_mu.
  void NoteDemand(int64_t user_id, int64_t worst, std::chrono::steady_clock::time_point now) {
    BudgetDemand& d = demand[user_id];
    if (d.since == std::chrono::steady_clock::time_point{}) d.since = now;
    d.worst = std::max(d.worst, worst);
    d.touched = true;
  }

  // Under budget_mu: no more spending; returned (by the loop) once nothing is in flight.
  void CloseLocked(Budget& b) {
    if (!b.open) return;
    b.open = false;
    auto it = open_by_user.find(b.user_id);
    if (it != open_by_user.end() && it->second == b.id) open_by_user.erase(it);
  }

  // Under budget_mu: billing no longer holds it (restarted, expired): never spent or returned.
  void ForgetLocked(int64_t budget_id) {
    auto it = budgets.find(budget_id);
    if (it == budgets.end()) return;
    CloseLocked(it->second);
    budgets.erase(it);
  }

  // The worst case of the request at the user's multiplier, as billing's Hold would price it.
  static int64_t WorstCase(const Pricing& pricing, const HoldRequest& request,
                           int64_t multiplier_ppm, int64_t now_ms) {
    const billing::Rates rates = RatesOf(pricing, request.model, now_ms);
    billing::UnitCounts units;
    units.images = request.images;
    units.audio_ms = request.audio_ms;
    units.characters = request.characters;
    const int64_t priced = billing::HoldMicros(
        rates, std::max<int64_t>(0, request.estimated_prompt_tokens),
        std::max<int64_t>(0, request.max_completion_tokens), units, multiplier_ppm,
        billing::HoldTierMultiplier(pricing.tiers, request.service_tier));
    // Billing's Hold holds at least the request's floor (the catch-all's); so does a budget.
    return std::max(priced, request.min_amount_micros);
  }

  // Holds the request from the user's budget when it has the worst case left; else notes the
  // demand and answers nothing (the caller asks billing).
  std::optional<std::string> HoldFromBudget(int64_t user_id, const HoldRequest& request) {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(budget_mu);
    if (budget_stopping) return std::nullopt;
    if (!pricing) {
      NoteDemand(user_id, 0, now);
      return std::nullopt;
    }
    auto open = open_by_user.find(user_id);
    Budget* b = open != open_by_user.end() ? &budgets.at(open->second) : nullptr;
    const int64_t worst = WorstCase(
        *pricing, request, b ? b->multiplier_ppm : last_multiplier(user_id), UnixMillisNow());
    if (!b || now >= b->use_until || b->left < worst) {
      NoteDemand(user_id, worst, now);
      return std::nullopt;
    }
    b->left -= worst;
    b->used = SatAdd(b->used, worst);
    ++b->in_flight;
    b->max_worst = std::max(b->max_worst, worst);
    b->last_used = now;
    held_from_budgets.fetch_add(1, std::memory_order_relaxed);
    if (holds_budget) holds_budget->Increment();
    return "b" + std::to_string(b->id) + "." + std::to_string(worst);
  }

  int64_t last_multiplier(int64_t user_id) const {
    auto it = multipliers.find(user_id);
    return it == multipliers.end() ? billing::kMultiplierOne : it->second;
  }

  // A request held from a budget never ran: its worst case is free again.
  void ReleaseToBudget(const BudgetHold& h) {
    std::lock_guard lock(budget_mu);
    auto it = budgets.find(h.budget_id);
    if (it == budgets.end()) return;
    it->second.left += h.worst;
    --it->second.in_flight;
  }

  // A request held from a budget finished: its cost (priced as billing will price the record) is
  // spent, the rest of its worst case is free again.
  void SpendFromBudget(const BudgetHold& h, const UsageRecord& record) {
    std::lock_guard lock(budget_mu);
    auto it = budgets.find(h.budget_id);
    if (it == budgets.end() || !pricing) return;
    Budget& b = it->second;
    const int64_t now_ms = UnixMillisNow() - record.latency.count();  // the price at its start
    billing::UnitCounts units;
    units.images = record.images;
    units.image_size = record.image_size;
    units.image_quality = record.image_quality;
    units.audio_ms = record.audio_ms;
    units.characters = record.characters;
    const int64_t cost =
        billing::RecordCostMicros(RatesOf(*pricing, record.model, now_ms),
                                  {record.prompt_tokens, record.completion_tokens,
                                   record.cached_tokens, record.cache_write_tokens},
                                  record.usage_estimated, units, b.multiplier_ppm,
                                  billing::TierMultiplier(pricing->tiers, record.service_tier));
    b.spent = SatAdd(b.spent, cost);
    b.left += h.worst - cost;
    --b.in_flight;
  }

  void BudgetLoop() {
    std::unique_lock lock(budget_mu);
    const auto idle_after = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(100),
                                                                10 * options.budget_interval);
    for (;;) {
      if (budget_stopping)
        budget_cv.wait_for(lock, std::chrono::milliseconds(5));  // for the last answer
      else
        budget_cv.wait_for(lock, options.budget_interval, [this] { return budget_stopping; });
      if (crashed.load()) return;
      const auto now = std::chrono::steady_clock::now();
      pb::BudgetRequest request;
      std::vector<std::pair<int64_t, int64_t>> asked;  // (user, budget asked about)
      for (auto it = budgets.begin(); it != budgets.end();) {
        Budget& b = it->second;
        if (budget_stopping || now >= b.use_until || now - b.last_used > idle_after) CloseLocked(b);
        if (!b.open) {
          if (b.in_flight <= 0) {
            // Every request of it finished: back, with what they cost.
            auto* r = request.add_returns();
            r->set_budget_id(b.id);
            r->set_spent_micros(b.spent);
            it = budgets.erase(it);
            continue;
          }
          ++it;
          continue;
        }
        const bool low =
            b.use_until - now < b.ttl / 2 || b.left < SatMul(4, b.max_worst) || b.left < b.full / 2;
        if (low) NoteDemand(b.user_id, b.max_worst, now);
        ++it;
      }
      // Without prices the edge cannot size an ask: the first call only fetches them.
      if (!budget_stopping && !budget_in_flight && pricing) {
        for (auto it = demand.begin(); it != demand.end();) {
          BudgetDemand& d = it->second;
          if (d.asking || now < d.next_ask) {
            ++it;
            continue;
          }
          if (!d.touched) {
            // Nobody wanted it since the last answer: forget it after a while.
            it = now - d.since > std::chrono::seconds(1) ? demand.erase(it) : std::next(it);
            continue;
          }
          auto open = open_by_user.find(it->first);
          Budget* b = open != open_by_user.end() ? &budgets.at(open->second) : nullptr;
          auto* ask = request.add_asks();
          ask->set_user_id(it->first);
          ask->set_budget_id(b ? b->id : 0);
          // Enough for a whole ttl at the rate the budget was used since its last refill (twice
          // what it used, at least), at least 16 of the largest request.
          const int64_t worst = std::max<int64_t>(d.worst, b ? b->max_worst : 0);
          int64_t for_ttl = 0;
          if (b) {
            const auto elapsed = std::max<std::chrono::steady_clock::duration>(
                now - b->filled_at, options.budget_interval);
            for_ttl = static_cast<int64_t>(static_cast<double>(b->used) *
                                           std::chrono::duration<double>(b->ttl) / elapsed);
          }
          ask->set_micros(
              std::max({for_ttl, SatMul(2, b ? b->used : 0), SatMul(16, worst), int64_t{1}}));
          ask->set_min_micros(worst);
          if (b) ask->set_left_micros(std::max<int64_t>(0, b->left));
          asked.emplace_back(it->first, b ? b->id : 0);
          d.asking = true;
          d.touched = false;
          ++it;
        }
      }
      if (budgets_gauge) budgets_gauge->Set(static_cast<double>(open_by_user.size()));
      for (auto& r : pending_returns) *request.add_returns() = std::move(r);
      pending_returns.clear();
      if (budget_in_flight) {
        // One call at a time: the returns wait for the next one.
        for (auto& r : *request.mutable_returns()) pending_returns.push_back(std::move(r));
        continue;
      }
      const bool fetch_prices =
          !pricing && !demand.empty() && !budget_stopping && now >= next_fetch;
      if (request.asks_size() == 0 && request.returns_size() == 0 && !fetch_prices) {
        if (budget_stopping) return;  // everything returned (or still running: expires there)
        continue;
      }
      if (pricing) request.set_price_version(pricing->version);
      budget_in_flight = true;
      CallUnary<pb::BudgetResponse>(
          calls, options.timeout, std::move(request),
          [this](auto... a) { stub->async()->Budget(a...); },
          [this, asked = std::move(asked), sent_at = now](const grpc::Status& status,
                                                          pb::BudgetResponse& response) {
            OnBudgetAnswer(asked, sent_at, status, response);
          },
          CallTracker::Kind::kDelivery);
    }
  }

  void OnBudgetAnswer(const std::vector<std::pair<int64_t, int64_t>>& asked,
                      std::chrono::steady_clock::time_point sent_at, const grpc::Status& status,
                      pb::BudgetResponse& response) {
    std::lock_guard lock(budget_mu);
    const auto now = std::chrono::steady_clock::now();
    budget_in_flight = false;
    budget_cv.notify_all();
    const bool ok = status.ok() && response.grants_size() == static_cast<int>(asked.size());
    if (ok ? budget_calls_ok : budget_calls_failed)
      (ok ? budget_calls_ok : budget_calls_failed)->Increment();
    if (!ok) next_fetch = now + std::chrono::seconds(1);
    if (!ok) {
      // Unreachable (or restarting): spend none of them again; each goes back once its requests
      // finished (if billing still has it; else it expires there).
      for (auto& [id, b] : budgets) CloseLocked(b);
    } else if (incarnation != 0 && response.incarnation() != incarnation) {
      // Restarted: what the earlier process granted is gone there, so gone here too.
      std::vector<int64_t> ids;
      for (const auto& [id, b] : budgets) ids.push_back(id);
      for (int64_t id : ids) ForgetLocked(id);
      pending_returns.clear();
    }
    if (ok) incarnation = response.incarnation();
    if (ok && response.has_prices() && !response.prices().version().empty()) {
      auto next = std::make_shared<Pricing>();
      next->version = response.prices().version();
      for (const auto& p : response.prices().prices())
        next->by_model[p.model()].push_back(FromProto(p));
      for (const auto& t : response.prices().tier_multipliers())
        next->tiers[t.tier()] = t.multiplier_ppm();
      pricing = std::move(next);
    }
    for (size_t k = 0; k < asked.size(); ++k) {
      const auto [user_id, budget_id] = asked[k];
      auto d = demand.find(user_id);
      if (d != demand.end()) d->second.asking = false;
      const pb::BudgetGrant* g = ok ? &response.grants(static_cast<int>(k)) : nullptr;
      if (!g) {
        if (d != demand.end()) d->second.next_ask = now + std::chrono::seconds(1);
        continue;
      }
      multipliers[user_id] = g->multiplier_ppm();
      if (multipliers.size() > 100000) multipliers.clear();
      if (budget_id != 0 && !g->found()) {
        ForgetLocked(budget_id);  // expired there: nothing of it is held any more
        continue;
      }
      if (budget_stopping) {
        if (g->budget_id() != 0 && budget_id == 0) {
          auto* r = &pending_returns.emplace_back();
          r->set_budget_id(g->budget_id());
          r->set_spent_micros(0);
        }
        continue;
      }
      if (g->budget_id() == 0 || (g->added_micros() == 0 && budget_id == 0)) {
        // None granted (close to the end of the user's money): billing decides each request
        // until the next ask.
        if (d != demand.end()) d->second.next_ask = now + std::chrono::milliseconds(100);
        continue;
      }
      std::map<int64_t, Budget>::iterator it;
      if (budget_id != 0) {
        // A refill: added to the budget even if it closed meanwhile (then returned as it is).
        it = budgets.find(budget_id);
        if (it == budgets.end()) continue;  // returned meanwhile: the return gives it all back
      } else {
        auto old = open_by_user.find(user_id);
        if (old != open_by_user.end()) CloseLocked(budgets.at(old->second));
        Budget b;
        b.id = g->budget_id();
        b.user_id = user_id;
        b.incarnation = response.incarnation();
        b.last_used = now;
        it = budgets.emplace(b.id, b).first;
        open_by_user[user_id] = b.id;
      }
      Budget& b = it->second;
      b.granted = SatAdd(b.granted, g->added_micros());
      b.left = SatAdd(b.left, g->added_micros());
      b.used = 0;
      b.full = b.left;
      b.filled_at = now;
      b.multiplier_ppm = g->multiplier_ppm();
      b.ttl = std::chrono::milliseconds(g->ttl_ms());
      // From when the call was sent: never past billing's own deadline for it.
      b.use_until = sent_at + b.ttl;
      if (d != demand.end()) {
        if (g->added_micros() == 0) d->second.next_ask = now + std::chrono::milliseconds(100);
        if (!d->second.touched) demand.erase(d);
      }
    }
  }

  void UpdateGauges() {
    if (spool_records_gauge) spool_records_gauge->Set(static_cast<double>(spool.records()));
    if (spool_bytes_gauge) spool_bytes_gauge->Set(static_cast<double>(spool.bytes()));
  }

  void CountDropped(size_t n) {
    if (n == 0) return;
    if (dropped_counter) dropped_counter->Increment(static_cast<double>(n));
  }

  // Counts an append of records and logs the spool turning full (or failing) and back.
  void NoteAppend(const Spool::AppendResult& r) {
    if (spooled_counter) spooled_counter->Increment(static_cast<double>(r.appended));
    CountDropped(r.rejected);
    if (r.rejected > 0 && !full_logged.exchange(true)) {
      log::Error("edge",
                 "billing spool full (or its disk failing): usage records are being dropped "
                 "until billing catches up",
                 {{"dir", spool.dir()},
                  {"spool_bytes", spool.bytes()},
                  {"spool_max_bytes", options.spool_max_bytes},
                  {"dropped", r.rejected}});
    } else if (r.rejected == 0 && full_logged.load(std::memory_order_relaxed) &&
               full_logged.exchange(false)) {
      log::Info("edge", "billing spool accepts records again", {{"dir", spool.dir()}});
    }
  }

  // Makes the records written on the requests' threads durable (one fsync). Sender thread.
  void SyncSpool() {
    spool.Sync();
    UpdateGauges();
  }

  // One RecordUsage in flight at a time, always the oldest spooled records.
  void SendLoop() {
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait_for(lock, options.flush_interval,
                    [&] { return stopping || (wake_sender && !batch_in_flight); });
        wake_sender = false;
      }
      SyncSpool();
      std::unique_lock lock(mu);
      if (stopping) {
        lock.unlock();
        SyncSpool();  // a Record that raced with the stop
        return;
      }
      if (batch_in_flight || std::chrono::steady_clock::now() < next_try) continue;
      lock.unlock();
      auto payloads = spool.Front(options.batch_size, 4u << 20);
      if (payloads.empty()) continue;
      pb::RecordUsageRequest request;
      for (const auto& p : payloads) {
        if (!request.add_records()->ParseFromString(p)) {
          // Cannot happen with a checksummed spool we wrote ourselves; never block on it.
          request.mutable_records()->RemoveLast();
        }
      }
      const size_t n = payloads.size();
      lock.lock();
      batch_in_flight = true;
      lock.unlock();
      CallUnary<pb::RecordUsageResponse>(
          calls, options.deliver_timeout, std::move(request),
          [this](auto... a) { stub->async()->RecordUsage(a...); },
          [this, n](const grpc::Status& status, pb::RecordUsageResponse&) {
            if (status.ok()) {
              // Counted before the spool drops them, so a reader that sees an empty spool
              // also sees every delivered record counted.
              delivered.fetch_add(static_cast<int64_t>(n), std::memory_order_relaxed);
              if (delivered_counter) delivered_counter->Increment(static_cast<double>(n));
              spool.Ack(n);
              if (failing.exchange(false))
                log::Info("edge", "billing RecordUsage delivers again",
                          {{"spooled", spool.records()}});
            } else if (!failing.exchange(true)) {
              log::Warn("edge",
                        "billing RecordUsage failed; the records stay spooled and are "
                        "sent again",
                        {{"records", n},
                         {"spooled", spool.records()},
                         {"grpc_code", static_cast<int>(status.error_code())}});
            }
            UpdateGauges();
            std::lock_guard guard(mu);
            if (!status.ok())
              next_try = std::chrono::steady_clock::now() + options.retry_pause;
            else
              wake_sender = true;  // more may be waiting: no need to wait for the tick
            batch_in_flight = false;
            cv.notify_all();
          });
    }
  }

  GrpcBillingClientOptions options;
  Spool spool;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::BillingService::Stub> stub;
  CallTracker calls;
  std::mutex mu;  // everything below but the atomics
  std::condition_variable cv;
  bool batch_in_flight = false;
  bool wake_sender = false;
  std::chrono::steady_clock::time_point next_try;
  bool stopping = false;
  std::atomic<bool> full_logged{false};  // the spool refused records; logged once
  std::atomic<bool> failing{false};
  std::atomic<int64_t> delivered{0};
  prometheus::Counter* spooled_counter = nullptr;
  prometheus::Counter* delivered_counter = nullptr;
  prometheus::Counter* dropped_counter = nullptr;
  prometheus::Gauge* spool_records_gauge = nullptr;
  prometheus::Gauge* spool_bytes_gauge = nullptr;
  prometheus::Counter* holds_granted = nullptr;
  prometheus::Counter* holds_refused = nullptr;
  prometheus::Counter* holds_unavailable = nullptr;
  prometheus::Counter* holds_budget = nullptr;
  prometheus::Counter* budget_calls_ok = nullptr;
  prometheus::Counter* budget_calls_failed = nullptr;
  prometheus::Gauge* budgets_gauge = nullptr;
  std::atomic<int64_t> held_from_budgets{0};
  std::atomic<int64_t> holds_sent{0};
  std::atomic<bool> crashed{false};
  // Budgets: everything below, under budget_mu.
  mutable std::mutex budget_mu;
  std::condition_variable budget_cv;
  bool budget_stopping = false;
  bool budget_in_flight = false;
  uint64_t incarnation = 0;
  std::shared_ptr<const Pricing> pricing;
  std::chrono::steady_clock::time_point next_fetch;   // of the prices, after a failed call
  std::map<int64_t, Budget> budgets;                  // by id: open and closing
  std::unordered_map<int64_t, int64_t> open_by_user;  // user -> its open budget
  std::unordered_map<int64_t, BudgetDemand> demand;
  std::unordered_map<int64_t, int64_t> multipliers;  // user -> ppm, from the last grant
  std::vector<pb::BudgetReturn> pending_returns;     // for the next call
  std::thread sender;
  std::thread budgeter;
};

GrpcBillingClient::GrpcBillingClient(GrpcBillingClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

GrpcBillingClient::~GrpcBillingClient() { Shutdown(); }

void GrpcBillingClient::Shutdown() { impl_->Shutdown(); }

void GrpcBillingClient::Hold(HoldRequest request, std::function<void(HoldResult)> done) {
  const int64_t user_id = ParseId(request.principal.user_id);
  if (user_id == 0) {
    done(HoldResult{});  // not one of auth's users: nobody to charge, nothing to hold
    return;
  }
  if (impl_->options.budgets)
    if (auto from_budget = impl_->HoldFromBudget(user_id, request)) {
      HoldResult result;
      result.hold_id = std::move(*from_budget);
      done(std::move(result));
      return;
    }
  impl_->holds_sent.fetch_add(1, std::memory_order_relaxed);
  pb::HoldRequest hold;
  hold.set_request_id(request.request_id);
  hold.set_user_id(user_id);
  hold.set_api_key_id(ParseId(request.principal.api_key_id));
  hold.set_model(request.model);
  hold.set_estimated_prompt_tokens(std::max<int64_t>(0, request.estimated_prompt_tokens));
  hold.set_max_completion_tokens(std::max<int64_t>(0, request.max_completion_tokens));
  hold.set_service_tier(request.service_tier);
  hold.set_images(request.images);
  hold.set_audio_milliseconds(request.audio_ms);
  hold.set_characters(request.characters);
  hold.set_min_amount_micros(std::max<int64_t>(0, request.min_amount_micros));
  Impl* impl = impl_.get();
  CallUnary<pb::HoldResponse>(
      impl->calls, impl->options.timeout, std::move(hold),
      [impl](auto... a) { impl->stub->async()->Hold(a...); },
      [impl, done = std::move(done)](const grpc::Status& status, pb::HoldResponse& response) {
        HoldResult result;
        if (status.ok()) {
          if (response.hold_id() != 0) result.hold_id = std::to_string(response.hold_id());
          if (impl->holds_granted) impl->holds_granted->Increment();
          done(std::move(result));
          return;
        }
        if (!Unreachable(status)) {
          Failure answered = AnsweredError(status);
          if (answered.code == ErrorCode::kInsufficientQuota ||
              answered.code == ErrorCode::kRateLimited) {
            result.failure = Failure{ErrorCode::kInsufficientQuota, std::move(answered.message)};
            if (impl->holds_refused) impl->holds_refused->Increment();
            done(std::move(result));
            return;
          }
        }
        // Unreachable, or an error nobody could charge through: fail closed.
        static log::Throttle throttle;
        if (int64_t skipped = 0; throttle.Allow(&skipped))
          log::Warn(
              "edge", "billing Hold failed; refusing the request (fail closed)",
              {{"grpc_code", static_cast<int>(status.error_code())}, {"suppressed", skipped}});
        result.failure = Failure{ErrorCode::kServiceUnavailable, kUnavailable};
        if (impl->holds_unavailable) impl->holds_unavailable->Increment();
        done(std::move(result));
      });
}

void GrpcBillingClient::Release(std::string hold_id) {
  if (auto h = ParseBudgetHold(hold_id)) {
    impl_->ReleaseToBudget(*h);
    return;
  }
  const int64_t id = ParseId(hold_id);
  if (id == 0) return;
  pb::ReleaseHoldRequest request;
  request.set_hold_id(id);
  Impl* impl = impl_.get();
  // Not sent once shut down (or if it fails): the hold then expires on its own.
  CallUnary<pb::ReleaseHoldResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->ReleaseHold(a...); },
      [](const grpc::Status& status, pb::ReleaseHoldResponse&) {
        if (!status.ok())
          log::Debug("edge", "billing ReleaseHold failed",
                     {{"grpc_code", static_cast<int>(status.error_code())}});
      });
}

void GrpcBillingClient::Record(UsageRecord record) {
  const int64_t user_id = ParseId(record.principal.user_id);
  if (user_id == 0) return;  // not one of auth's users: nobody to charge
  // One message per thread, cleared and filled again: its string fields keep their buffers, so
  // building a record allocates nothing but its serialized form (a fresh message costs one
  // allocation per string field).
  thread_local pb::UsageRecord r;
  r.Clear();
  r.set_request_id(record.billing_id.empty() ? record.request_id : record.billing_id);
  r.set_user_id(user_id);
  r.set_api_key_id(ParseId(record.principal.api_key_id));
  r.set_model(record.model);
  r.set_upstream_model(record.upstream_model);
  r.set_upstream_key_id(record.upstream_key_id);
  if (auto h = ParseBudgetHold(record.hold_id)) {
    r.set_budget_id(h->budget_id);
    impl_->SpendFromBudget(*h, record);
  } else {
    r.set_hold_id(ParseId(record.hold_id));
  }
  r.set_prompt_tokens(std::max<int64_t>(0, record.prompt_tokens));
  r.set_completion_tokens(std::max<int64_t>(0, record.completion_tokens));
  r.set_cached_tokens(std::max<int64_t>(0, record.cached_tokens));
  r.set_cache_write_tokens(std::max<int64_t>(0, record.cache_write_tokens));
  r.set_usage_estimated(record.usage_estimated);
  r.set_streamed(record.streamed);
  r.set_service_tier(record.service_tier);
  r.set_endpoint_kind(record.endpoint_kind);
  r.set_images(std::max<int64_t>(0, record.images));
  r.set_image_size(record.image_size.substr(0, 64));
  r.set_image_quality(record.image_quality.substr(0, 64));
  r.set_audio_milliseconds(std::max<int64_t>(0, record.audio_ms));
  r.set_characters(std::max<int64_t>(0, record.characters));
  r.set_status(record.http_status);
  r.set_latency_ms(record.latency.count());
  r.set_client_disconnected(record.client_disconnected);
  r.set_attempts(record.attempts);
  r.set_client_ip(record.client_ip);
  r.set_request_body(std::move(record.request_body));
  r.set_response_body(std::move(record.response_body));
  r.set_bodies_truncated(record.bodies_truncated);
  const int64_t now_ms = UnixMillisNow();
  r.set_finished_at_ms(now_ms);
  r.set_started_at_ms(now_ms - record.latency.count());
  // Written into the spool here, before the caller moves on (one write() into the page cache,
  // no fsync: the sender thread syncs every flush interval), so a process killed after an
  // answer ended still has its record on disk for the next start to deliver.
  std::string payload = r.SerializeAsString();
  // Stored bodies can be large: the thread's message does not keep them.
  if (r.request_body().capacity() > 4096) std::string().swap(*r.mutable_request_body());
  if (r.response_body().capacity() > 4096) std::string().swap(*r.mutable_response_body());
  const auto appended = impl_->spool.AppendOne(std::move(payload), Spool::Durability::kWritten);
  impl_->NoteAppend(appended);
  if (appended.appended > 0 && impl_->spool.records() % impl_->options.batch_size == 0) {
    {
      std::lock_guard lock(impl_->mu);
      impl_->wake_sender = true;  // a batch is waiting: no need to wait for the tick
    }
    impl_->cv.notify_all();
  }
}

void GrpcBillingClient::GetAccount(const Principal& principal,
                                   std::function<void(AccountResult)> done) {
  const int64_t user_id = ParseId(principal.user_id);
  if (user_id == 0) {
    done(AccountResult{});  // no account
    return;
  }
  pb::GetAccountRequest request;
  request.set_user_id(user_id);
  Impl* impl = impl_.get();
  CallUnary<pb::GetAccountResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->GetAccount(a...); },
      [done = std::move(done)](const grpc::Status& status, pb::GetAccountResponse& response) {
        AccountResult result;
        if (status.ok()) {
          const auto& a = response.account();
          result.found = true;
          result.balance_micros = a.balance_micros();
          result.credit_limit_micros = a.credit_limit_micros();
          result.held_micros = a.held_micros();
          result.available_micros = a.available_micros();
          result.total_top_ups_micros = a.total_top_ups_micros();
          result.total_cost_micros = a.total_cost_micros();
        } else if (Unreachable(status) || AnsweredError(status).code != ErrorCode::kNotFound) {
          log::Warn("edge", "billing GetAccount failed",
                    {{"grpc_code", static_cast<int>(status.error_code())}});
          result.failure = Failure{ErrorCode::kServiceUnavailable,
                                   "The billing service is unavailable. Please retry shortly."};
        }  // else not found: the user has no account
        done(std::move(result));
      });
}

void GrpcBillingClient::GetUsage(const Principal& principal, bool key_only, std::string from_day,
                                 std::string to_day, std::function<void(UsageResult)> done) {
  const int64_t user_id = ParseId(principal.user_id);
  if (user_id == 0) {
    done(UsageResult{});  // nobody billed: no usage
    return;
  }
  pb::GetUsageRequest request;
  request.set_user_id(user_id);
  if (key_only) request.set_api_key_id(ParseId(principal.api_key_id));
  request.set_from_day(std::move(from_day));
  request.set_to_day(std::move(to_day));
  Impl* impl = impl_.get();
  CallUnary<pb::GetUsageResponse>(
      impl->calls, impl->options.timeout, std::move(request),
      [impl](auto... a) { impl->stub->async()->GetUsage(a...); },
      [done = std::move(done)](const grpc::Status& status, pb::GetUsageResponse& response) {
        UsageResult result;
        if (status.ok()) {
          for (const auto& row : response.rows())
            result.days.push_back({row.day(), row.requests(), row.prompt_tokens(),
                                   row.completion_tokens(), row.cached_tokens(),
                                   row.cost_micros()});
          done(std::move(result));
          return;
        }
        if (!Unreachable(status)) {
          Failure answered = AnsweredError(status);
          if (answered.code == ErrorCode::kInvalidRequest) {
            result.failure = std::move(answered);  // a bad date range, named by billing
            done(std::move(result));
            return;
          }
        }
        log::Warn("edge", "billing GetUsage failed",
                  {{"grpc_code", static_cast<int>(status.error_code())}});
        result.failure = Failure{ErrorCode::kServiceUnavailable,
                                 "The billing service is unavailable. Please retry shortly."};
        done(std::move(result));
      });
}

int64_t GrpcBillingClient::delivered() const {
  return impl_->delivered.load(std::memory_order_relaxed);
}
size_t GrpcBillingClient::spooled() const { return impl_->spool.records(); }
int64_t GrpcBillingClient::held_from_budgets() const {
  return impl_->held_from_budgets.load(std::memory_order_relaxed);
}
int64_t GrpcBillingClient::holds_sent() const {
  return impl_->holds_sent.load(std::memory_order_relaxed);
}
size_t GrpcBillingClient::live_budgets() const {
  std::lock_guard lock(impl_->budget_mu);
  return impl_->open_by_user.size();
}
void GrpcBillingClient::SimulateCrashForTest() { impl_->SimulateCrash(); }

}  // namespace tollgate::edge
