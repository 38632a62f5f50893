#include "tollgate/billing/billing.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <thread>

#include "tollgate/civil_date.h"
#include "tollgate/redact.h"

namespace tollgate::billing {
namespace {

void Require(bool ok, const std::string& message) {
  if (!ok) throw Error(ErrorCode::kInvalidRequest, message);
}

void RequireUser(int64_t user_id) { Require(user_id > 0, "user_id must be a positive id"); }

std::string UserTarget(int64_t user_id) { return "user:" + std::to_string(user_id); }

// Keeps the stored text bounded whatever a caller sends.
// Valid UTF-8 without NUL, at most `max` bytes: a record is never refused for its text (the edge
// would redeliver it forever), and PostgreSQL TEXT refuses invalid UTF-8 and NUL.
std::string Bounded(const std::string& s, size_t max) { return SanitizeText(s, max); }

constexpr size_t kMaxBody = 1 << 20;  // per body; the edge cuts at edge.store_bodies_max_bytes

}  // namespace

Billing::Billing(BillingRepository& repo, const Clock& clock, BillingOptions options)
    : repo_(repo),
      clock_(clock),
      options_(options),
      quiet_until_ms_(options.quiet_after_start.count() > 0
                          ? clock.UnixMillis() + options.quiet_after_start.count()
                          : 0) {}

std::vector<BudgetGrant> Billing::Budgets(const std::vector<BudgetAsk>& asks) {
  int64_t now = clock_.UnixMillis();
  std::vector<BudgetGrant> out(asks.size());
  std::vector<int64_t> load;
  for (const BudgetAsk& a : asks) {
    RequireUser(a.user_id);
    if (book_.NeedsLoad(a.user_id)) load.push_back(a.user_id);
  }
  if (!load.empty()) LoadAccounts(load);
  const BudgetSizing sizing{options_.budget_min_headroom_micros, 8};
  const bool quiet = now < quiet_until_ms_;
  for (size_t i = 0; i < asks.size(); ++i) {
    const BudgetAsk& a = asks[i];
    BudgetGrant& g = out[i];
    g.ttl_ms = options_.budget_ttl.count();
    g.multiplier_ppm = CachedMultiplier(a.user_id, now);
    // Quiet after a start: budgets of the previous incarnation may still be in use (nothing is
    // added, so a new ask gets none).
    const int64_t want = quiet ? 0 : a.want_micros;
    auto placed = book_.PlaceBudget(a.user_id, a.budget_id, want, a.min_micros, sizing, now,
                                    now + options_.budget_ttl.count() + options_.hold_ttl.count(),
                                    a.left_micros);
    if (!placed) {
      LoadAccounts({a.user_id});  // invalidated by an admin change meanwhile
      placed = book_.PlaceBudget(a.user_id, a.budget_id, want, a.min_micros, sizing, now,
                                 now + options_.budget_ttl.count() + options_.hold_ttl.count(),
                                 a.left_micros);
    }
    if (!placed) continue;  // nothing granted
    g.found = placed->found;
    g.budget_id = placed->budget_id;
    g.added_micros = placed->added_micros;
    g.amount_micros = placed->amount_micros;
  }
  return out;
}

PriceSnapshot Billing::Prices() {
  const int64_t now = clock_.UnixMillis();
  {
    std::lock_guard lock(cache_mu_);
    if (snapshot_.loaded_at_ms != 0 &&
        now - snapshot_.loaded_at_ms < options_.price_cache_ttl.count())
      return snapshot_.value;
  }
  PriceSnapshot snap;
  // Newest first: per (model, provider) every price not in effect yet, then the one in effect.
  std::map<std::pair<std::string, std::string>, bool> current_seen;
  for (auto& p : repo_.ListPrices("")) {
    bool& seen = current_seen[{p.model, p.provider}];
    if (seen) continue;
    if (p.effective_from_ms <= now) seen = true;
    snap.prices.push_back(std::move(p));
  }
  snap.tiers = repo_.ServiceTierMultipliers();
  // The version names the content, so an edge holding the same prices is sent none.
  std::string text;
  for (const auto& p : snap.prices) {
    text += p.model + '\x1f' + p.provider + '\x1f' + std::to_string(p.id) + '\x1f' +
            std::to_string(p.effective_from_ms) + '\x1e';
  }
  for (const auto& [tier, ppm] : snap.tiers) text += tier + '\x1f' + std::to_string(ppm) + '\x1e';
  snap.version =
      std::to_string(std::hash<std::string>{}(text)) + "." + std::to_string(snap.prices.size());
  std::lock_guard lock(cache_mu_);
  snapshot_ = {snap, std::max<int64_t>(now, 1)};
  return snap;
}

HoldDecision Billing::Hold(const HoldInput& input) {
  if (auto d = Decide(input, /*may_block=*/true)) return *d;
  throw std::runtime_error("the account could not be loaded");
}

std::optional<HoldDecision> Billing::TryHold(const HoldInput& input) {
  return Decide(input, /*may_block=*/false);
}

std::optional<HoldDecision> Billing::Decide(const HoldInput& input, bool may_block) {
  RequireUser(input.user_id);
  Require(!input.model.empty(), "model is required");
  int64_t now = clock_.UnixMillis();
  if (now < quiet_until_ms_) {
    // Budgets of the previous incarnation may still be spent: wait them out (bounded in real
    // time, so a clock that does not move cannot hang a call).
    if (!may_block) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(
        std::min<int64_t>(quiet_until_ms_ - now, options_.quiet_after_start.count())));
    now = clock_.UnixMillis();
  }
  auto prices =
      may_block ? std::optional(CachedPrices(input.model, now)) : PeekPrices(input.model, now);
  auto multiplier = may_block ? std::optional(CachedMultiplier(input.user_id, now))
                              : PeekMultiplier(input.user_id, now);
  auto tier_multiplier = may_block ? std::optional(CachedTierMultiplier(input.service_tier, now))
                                   : PeekTierMultiplier(input.service_tier, now);
  if (!prices || !multiplier || !tier_multiplier) return std::nullopt;
  // An unpriced model costs nothing, so its hold is 0 (granted unless the account is overdrawn).
  Rates rates;
  if (auto price = SelectPrice(*prices, input.provider, now)) rates = price->rates;
  HoldDecision d;
  d.amount_micros = HoldMicros(rates, input.estimated_prompt_tokens, input.max_completion_tokens,
                               input.units, *multiplier, *tier_multiplier);
  d.amount_micros = std::max(d.amount_micros, input.min_amount_micros);
  d.expires_at_ms = now + options_.hold_ttl.count();
  const std::string request_id = Bounded(input.request_id, 256);
  // Not loaded (first hold, or after an admin change on this replica): load, then place.
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (auto placed =
            book_.Place(input.user_id, request_id, d.amount_micros, now, d.expires_at_ms)) {
      if (placed->request_id_taken)
        throw Error(ErrorCode::kAlreadyExists, "request_id is already used by another request");
      d.granted = placed->granted;
      d.hold_id = placed->hold_id;
      d.available_micros = placed->available_micros;
      return d;
    }
    if (!may_block) return std::nullopt;
    LoadAccounts({input.user_id});
  }
  return std::nullopt;
}

void Billing::LoadAccounts(const std::vector<int64_t>& users) {
  book_.Load(repo_.LoadAccounts(users));
}

void Billing::Release(int64_t hold_id) { book_.Release(hold_id); }

int64_t Billing::ExpireHolds() {
  return book_.Expire(clock_.UnixMillis(), options_.idle_account.count());
}

void Billing::RefreshBalances() {
  std::vector<int64_t> users = book_.Users();
  constexpr size_t kChunk = 1000;
  for (size_t from = 0; from < users.size(); from += kChunk)
    LoadAccounts(std::vector<int64_t>(users.begin() + from,
                                      users.begin() + std::min(users.size(), from + kChunk)));
  std::vector<int64_t> holds = book_.LiveHoldIds();
  for (size_t from = 0; from < holds.size(); from += kChunk)
    book_.Forget(repo_.SettledHolds(std::vector<int64_t>(
        holds.begin() + from, holds.begin() + std::min(holds.size(), from + kChunk))));
}

std::optional<std::vector<PriceRecord>> Billing::PeekPrices(const std::string& model, int64_t now) {
  std::lock_guard lock(cache_mu_);
  auto it = prices_.find(model);
  if (it == prices_.end() || now - it->second.loaded_at_ms >= options_.price_cache_ttl.count())
    return std::nullopt;
  return it->second.value;
}

std::optional<int64_t> Billing::PeekMultiplier(int64_t user_id, int64_t now) {
  std::lock_guard lock(cache_mu_);
  auto it = multipliers_.find(user_id);
  if (it == multipliers_.end() || now - it->second.loaded_at_ms >= options_.price_cache_ttl.count())
    return std::nullopt;
  return it->second.value;
}

std::optional<int64_t> Billing::PeekTierMultiplier(const std::string& tier, int64_t now) {
  std::lock_guard lock(cache_mu_);
  if (tier_multipliers_.loaded_at_ms == 0 ||
      now - tier_multipliers_.loaded_at_ms >= options_.price_cache_ttl.count())
    return std::nullopt;
  return HoldTierMultiplier(tier_multipliers_.value, tier);
}

int64_t Billing::CachedTierMultiplier(const std::string& tier, int64_t now) {
  if (auto cached = PeekTierMultiplier(tier, now)) return *cached;
  auto tiers = repo_.ServiceTierMultipliers();
  std::lock_guard lock(cache_mu_);
  tier_multipliers_ = {tiers, std::max<int64_t>(now, 1)};
  return HoldTierMultiplier(tiers, tier);
}

std::vector<PriceRecord> Billing::CachedPrices(const std::string& model, int64_t now) {
  {
    std::lock_guard lock(cache_mu_);
    auto it = prices_.find(model);
    if (it != prices_.end() && now - it->second.loaded_at_ms < options_.price_cache_ttl.count())
      return it->second.value;
  }
  auto prices = repo_.PricesOf(model);
  std::lock_guard lock(cache_mu_);
  // Bounded: an unknown model name per request must not grow memory for ever.
  if (prices_.size() >= 10000) prices_.clear();
  prices_[model] = {prices, now};
  return prices;
}

int64_t Billing::CachedMultiplier(int64_t user_id, int64_t now) {
  {
    std::lock_guard lock(cache_mu_);
    auto it = multipliers_.find(user_id);
    if (it != multipliers_.end() &&
        now - it->second.loaded_at_ms < options_.price_cache_ttl.count())
      return it->second.value;
  }
  int64_t ppm = repo_.MultiplierOf(user_id);
  std::lock_guard lock(cache_mu_);
  if (multipliers_.size() >= 100000) multipliers_.clear();
  multipliers_[user_id] = {ppm, now};
  return ppm;
}

std::vector<bool> Billing::Record(std::vector<UsageInput> records) {
  const int64_t now = clock_.UnixMillis();
  for (auto& r : records) {
    // A record is never refused for its content (the edge would redeliver it
    // forever): it is normalised instead. Only a missing request id is unusable.
    Require(!r.request_id.empty(), "every usage record needs a request_id");
    r.request_id = Bounded(r.request_id, 256);
    r.model = Bounded(r.model, 256);
    r.upstream_model = Bounded(r.upstream_model, 256);
    r.provider = Bounded(r.provider, 256);
    r.service_tier = Bounded(r.service_tier, 64);
    r.endpoint_kind = Bounded(r.endpoint_kind, 64);
    r.units.image_size = Bounded(r.units.image_size, 64);
    r.units.image_quality = Bounded(r.units.image_quality, 64);
    r.client_ip = Bounded(r.client_ip, 64);
    bool cut_request = false;
    bool cut_response = false;
    r.request_body = SanitizeText(r.request_body, kMaxBody, &cut_request);
    r.response_body = SanitizeText(r.response_body, kMaxBody, &cut_response);
    r.bodies_truncated = r.bodies_truncated || cut_request || cut_response;
    r.tokens.prompt = std::clamp<int64_t>(r.tokens.prompt, 0, kMaxTokens);
    r.tokens.completion = std::clamp<int64_t>(r.tokens.completion, 0, kMaxTokens);
    r.tokens.cached = std::clamp<int64_t>(r.tokens.cached, 0, r.tokens.prompt);
    r.tokens.cache_write =
        std::clamp<int64_t>(r.tokens.cache_write, 0, r.tokens.prompt - r.tokens.cached);
    r.latency_ms = std::max<int64_t>(r.latency_ms, 0);
    if (r.started_at_ms <= 0) r.started_at_ms = now;
    if (r.finished_at_ms <= 0) r.finished_at_ms = std::max(now, r.started_at_ms);
  }
  if (records.empty()) return {};
  std::vector<int64_t> costs;
  std::map<int64_t, int64_t> versions;
  std::vector<bool> stored = repo_.Ingest(records, now, &costs, &versions);
  // Committed: the records' holds end and their costs leave the balances this replica holds.
  std::vector<Settlement> settled;
  settled.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i)
    settled.push_back({records[i].user_id, records[i].hold_id, stored[i] ? costs[i] : 0,
                       stored[i] && costs[i] != 0 ? versions[records[i].user_id] : 0,
                       records[i].budget_id});
  book_.Settle(settled);
  return stored;
}

AuditEntry Billing::Audit(const std::string& actor, std::string action, std::string target,
                          std::string details) const {
  AuditEntry e;
  e.at_ms = clock_.UnixMillis();
  e.actor = Bounded(actor.empty() ? "admin" : actor, 128);
  e.action = std::move(action);
  e.target = std::move(target);
  e.details = std::move(details);
  return e;
}

PriceRecord Billing::SetPrice(const std::string& actor, const NewPrice& in) {
  Require(!in.model.empty() && in.model.size() <= 256, "model is required (at most 256 bytes)");
  Require(in.provider.size() <= 256, "provider is at most 256 bytes");
  auto valid = [](int64_t p) { return p >= 0 && p <= kMaxPriceMicros; };
  Require(valid(in.input_micros_per_mtok) && valid(in.output_micros_per_mtok) &&
              valid(in.cached_input_micros_per_mtok.value_or(0)) &&
              valid(in.cache_write_micros_per_mtok.value_or(0)),
          "prices are micro-units per 1M tokens, from 0 to " + std::to_string(kMaxPriceMicros));
  Require(in.effective_from_ms >= 0, "effective_from_ms must not be negative");
  Require(valid(in.audio_micros_per_minute) && valid(in.micros_per_mchar),
          "unit prices are micro-units, from 0 to " + std::to_string(kMaxPriceMicros));
  Require(in.image_prices.size() <= 100, "at most 100 image prices");
  PriceRecord p;
  p.model = in.model;
  p.provider = in.provider;
  p.rates.input_micros_per_mtok = in.input_micros_per_mtok;
  p.rates.output_micros_per_mtok = in.output_micros_per_mtok;
  p.rates.cached_input_micros_per_mtok =
      in.cached_input_micros_per_mtok.value_or(in.input_micros_per_mtok);
  p.rates.cache_write_micros_per_mtok =
      in.cache_write_micros_per_mtok.value_or(in.input_micros_per_mtok);
  p.effective_from_ms = in.effective_from_ms > 0 ? in.effective_from_ms : clock_.UnixMillis();
  nlohmann::json images = nlohmann::json::array();
  for (const auto& text : in.image_prices) {
    auto rate = ParseImageRate(text);
    Require(rate.has_value(), "image price '" + text.substr(0, 64) +
                                  "' is not SIZE/QUALITY=MICROS (e.g. 1024x1024/hd=80000)");
    images.push_back(FormatImageRate(*rate));
    p.rates.images.push_back(std::move(*rate));
  }
  p.rates.audio_micros_per_minute = in.audio_micros_per_minute;
  p.rates.micros_per_mchar = in.micros_per_mchar;
  nlohmann::json details = {{"model", p.model},
                            {"provider", p.provider},
                            {"input_micros_per_mtok", p.rates.input_micros_per_mtok},
                            {"output_micros_per_mtok", p.rates.output_micros_per_mtok},
                            {"cached_input_micros_per_mtok", p.rates.cached_input_micros_per_mtok},
                            {"cache_write_micros_per_mtok", p.rates.cache_write_micros_per_mtok},
                            {"effective_from_ms", p.effective_from_ms}};
  if (!images.empty()) details["image_prices"] = images;
  if (p.rates.audio_micros_per_minute > 0)
    details["audio_micros_per_minute"] = p.rates.audio_micros_per_minute;
  if (p.rates.micros_per_mchar > 0) details["micros_per_mchar"] = p.rates.micros_per_mchar;
  PriceRecord added =
      repo_.AddPrice(p, Audit(actor, "set_price", "model:" + p.model, details.dump()));
  std::lock_guard lock(cache_mu_);
  prices_.erase(p.model);
  snapshot_.loaded_at_ms = 0;  // edges get the new price with their next budget call
  return added;
}

std::vector<PriceRecord> Billing::ListPrices(const std::string& model) {
  return repo_.ListPrices(model);
}

void Billing::SetMultiplier(const std::string& actor, int64_t user_id, int64_t multiplier_ppm) {
  RequireUser(user_id);
  Require(
      multiplier_ppm > 0 && multiplier_ppm <= kMaxMultiplierPpm,
      "multiplier_ppm must be from 1 to " + std::to_string(kMaxMultiplierPpm) + " (1000000 is x1)");
  nlohmann::json details = {{"multiplier_ppm", multiplier_ppm}};
  repo_.SetMultiplier(user_id, multiplier_ppm,
                      Audit(actor, "set_multiplier", UserTarget(user_id), details.dump()));
  std::lock_guard lock(cache_mu_);
  multipliers_.erase(user_id);
}

ServiceTierMultiplier Billing::SetServiceTierMultiplier(const std::string& actor,
                                                        const std::string& tier,
                                                        int64_t multiplier_ppm) {
  Require(!tier.empty() && tier.size() <= 64 &&
              std::all_of(tier.begin(), tier.end(),
                          [](unsigned char c) {
                            return std::isalnum(c) || c == '_' || c == '-' || c == '.';
                          }),
          "tier is a service_tier name as the upstream reports it (1 to 64 of A-Z a-z 0-9 _ - .)");
  Require(multiplier_ppm > 0 && multiplier_ppm <= kMaxServiceTierMultiplierPpm,
          "multiplier_ppm must be from 1 to " + std::to_string(kMaxServiceTierMultiplierPpm) +
              " (1000000 is x1)");
  ServiceTierMultiplier m{tier, multiplier_ppm};
  nlohmann::json details = {{"tier", tier}, {"multiplier_ppm", multiplier_ppm}};
  repo_.SetServiceTierMultiplier(
      m, Audit(actor, "set_service_tier_multiplier", "service_tier:" + tier, details.dump()));
  std::lock_guard lock(cache_mu_);
  tier_multipliers_.loaded_at_ms = 0;  // this replica's next hold reads the new multiplier
  snapshot_.loaded_at_ms = 0;
  return m;
}

std::vector<ServiceTierMultiplier> Billing::ListServiceTierMultipliers() {
  std::vector<ServiceTierMultiplier> out;
  for (const auto& [tier, ppm] : repo_.ServiceTierMultipliers()) out.push_back({tier, ppm});
  return out;
}

Account Billing::CreateAccount(const std::string& actor, int64_t user_id,
                               int64_t credit_limit_micros) {
  RequireUser(user_id);
  Require(credit_limit_micros >= 0, "credit_limit_micros must not be negative");
  nlohmann::json details = {{"credit_limit_micros", credit_limit_micros}};
  repo_.CreateAccount(user_id, credit_limit_micros,
                      Audit(actor, "create_account", UserTarget(user_id), details.dump()));
  book_.Invalidate(user_id);  // its next hold reads the new balance
  return GetBalance(user_id);
}

Account Billing::TopUp(const std::string& actor, int64_t user_id, int64_t amount_micros,
                       const std::string& note) {
  RequireUser(user_id);
  Require(amount_micros > 0, "amount_micros must be positive");
  Require(note.size() <= 1024, "note is at most 1024 bytes");
  nlohmann::json details = {{"amount_micros", amount_micros}, {"note", note}};
  repo_.TopUp(user_id, amount_micros, note,
              Audit(actor, "top_up", UserTarget(user_id), details.dump()));
  book_.Invalidate(user_id);  // its next hold reads the new balance
  return GetBalance(user_id);
}

Account Billing::SetCreditLimit(const std::string& actor, int64_t user_id,
                                int64_t credit_limit_micros) {
  RequireUser(user_id);
  Require(credit_limit_micros >= 0, "credit_limit_micros must not be negative");
  nlohmann::json details = {{"credit_limit_micros", credit_limit_micros}};
  repo_.SetCreditLimit(user_id, credit_limit_micros,
                       Audit(actor, "set_credit_limit", UserTarget(user_id), details.dump()));
  book_.Invalidate(user_id);  // its next hold reads the new balance
  return GetBalance(user_id);
}

Account Billing::GetBalance(int64_t user_id) {
  RequireUser(user_id);
  Account a = repo_.GetAccount(user_id);
  a.held_micros = book_.HeldMicros(user_id, clock_.UnixMillis());  // this replica's live holds
  return a;
}

std::vector<ReportRow> Billing::UsageReport(const std::string& from_day, const std::string& to_day,
                                            std::vector<Dimension> group_by, int64_t user_id,
                                            int64_t api_key_id) {
  auto from = ParseDay(from_day);
  auto to = ParseDay(to_day);
  Require(from && to, "from_day and to_day are UTC days written YYYY-MM-DD");
  Require(*from <= *to, "from_day is after to_day");
  Require(*to - *from <= std::chrono::days(3660), "the range is at most ten years");
  std::sort(group_by.begin(), group_by.end());
  group_by.erase(std::unique(group_by.begin(), group_by.end()), group_by.end());
  return repo_.Report({DayNumber(*from), DayNumber(*to), std::move(group_by), user_id, api_key_id});
}

std::vector<ReportRow> Billing::UserUsage(int64_t user_id, int64_t api_key_id,
                                          const std::string& from_day, const std::string& to_day) {
  RequireUser(user_id);  // never "every user" on this path
  return UsageReport(from_day, to_day, {Dimension::kDay}, user_id, api_key_id);
}

std::vector<AuditEntry> Billing::ListAuditLog(int32_t limit) {
  return repo_.ListAudit(AuditLimit(limit));
}

std::vector<RecordRow> Billing::ListRecords(RecordQuery query) {
  Require(query.limit >= 0 && query.limit <= 1000, "limit must be between 0 and 1000");
  Require(query.user_id >= 0 && query.api_key_id >= 0 && query.before_ms >= 0,
          "user_id, api_key_id and before_ms must not be negative");
  if (query.limit == 0) query.limit = 100;
  query.request_id = Bounded(query.request_id, 256);
  return repo_.ListRecords(query);
}

}  // namespace tollgate::billing
