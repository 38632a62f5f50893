// The caller's own usage and billing account, read from the billing service (GetUsage,
// GetAccount): GET /v1/usage, and for OpenAI-compatible chat front-ends
// GET [/v1]/dashboard/billing/subscription and /dashboard/billing/usage. The JSON is built
// outside the coroutines: GCC 12 mishandles braced temporaries inside them.
#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "src/async.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "tollgate/civil_date.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;

// A range of UTC days (inclusive, YYYY-MM-DD) read from a query, or why not (a 400).
struct DayRange {
  std::string from;
  std::string to;
  std::string error;
  std::string param;
};

DayRange OwnUsageRange(std::string_view target) {
  DayRange r;
  std::string start = QueryParam(target, "start_date");
  std::string end = QueryParam(target, "end_date");
  if (std::string date = QueryParam(target, "date"); !date.empty()) start = end = date;
  const auto today = DayOf(std::chrono::system_clock::now());
  if (end.empty()) end = FormatDay(today);
  if (start.empty()) start = FormatDay(MonthStart(today));
  auto from = ParseDay(start);
  auto to = ParseDay(end);
  if (!from) {
    r.error = "Invalid start_date '" + start.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "start_date";
  } else if (!to) {
    r.error = "Invalid end_date '" + end.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "end_date";
  } else if (*to < *from || (*to - *from).count() > 366) {
    r.error = "end_date must not be before start_date, and the range is at most 366 days.";
    r.param = "end_date";
  }
  r.from = start;
  r.to = end;
  return r;
}

// OpenAI's legacy form: both required, end_date exclusive, at most 100 days.
DayRange DashboardRange(std::string_view target) {
  DayRange r;
  std::string start = QueryParam(target, "start_date");
  std::string end = QueryParam(target, "end_date");
  auto from = ParseDay(start);
  auto to = ParseDay(end);
  if (!from) {
    r.error = "Invalid or missing start_date '" + start.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "start_date";
  } else if (!to) {
    r.error = "Invalid or missing end_date '" + end.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "end_date";
  } else if (*to <= *from || (*to - *from).count() > 100) {
    r.error = "end_date must be after start_date, and the range is at most 100 days.";
    r.param = "end_date";
  } else {
    r.from = FormatDay(*from);
    r.to = FormatDay(*to - std::chrono::days(1));
  }
  return r;
}

nlohmann::ordered_json UsageFigures(const UsageDay& d) {
  nlohmann::ordered_json j;
  j["requests"] = d.requests;
  j["prompt_tokens"] = d.prompt_tokens;
  j["completion_tokens"] = d.completion_tokens;
  j["cached_tokens"] = d.cached_tokens;
  j["cost_micros"] = d.cost_micros;
  j["cost"] = static_cast<double>(d.cost_micros) / 1e6;
  return j;
}

// {"object":"usage","start_date","end_date","total":{figures},"data":[{"date",figures}...]}
// where figures are requests, prompt/completion/cached tokens, cost_micros (integer micro-units
// of the operator's currency) and cost (the same as a decimal).
std::string OwnUsageBody(const UsageResult& usage, const DayRange& range) {
  nlohmann::ordered_json data = nlohmann::ordered_json::array();
  UsageDay total;
  for (const auto& d : usage.days) {
    nlohmann::ordered_json item;
    item["date"] = d.day;
    item.update(UsageFigures(d));
    data.push_back(std::move(item));
    total.requests += d.requests;
    total.prompt_tokens += d.prompt_tokens;
    total.completion_tokens += d.completion_tokens;
    total.cached_tokens += d.cached_tokens;
    total.cost_micros += d.cost_micros;
  }
  nlohmann::ordered_json body;
  body["object"] = "usage";
  body["start_date"] = range.from;
  body["end_date"] = range.to;
  body["total"] = UsageFigures(total);
  body["data"] = std::move(data);
  return body.dump();
}

// hard_limit_usd = top-ups + credit limit (all the user may spend), soft_limit_usd = top-ups,
// so hard_limit_usd - total_usage/100 (what front-ends show as remaining) is the balance plus the
// credit limit. access_until 0: no expiry. Plus balance_usd and available_usd (balance + credit
// limit - live holds). A user without an account sees zeros.
std::string SubscriptionBody(const AccountResult& account) {
  auto usd = [](int64_t micros) { return static_cast<double>(micros) / 1e6; };
  const int64_t hard = account.total_top_ups_micros + account.credit_limit_micros;
  nlohmann::ordered_json body;
  body["object"] = "billing_subscription";
  body["has_payment_method"] = true;
  body["hard_limit_usd"] = usd(hard);
  body["soft_limit_usd"] = usd(account.total_top_ups_micros);
  body["system_hard_limit_usd"] = usd(hard);
  body["access_until"] = 0;
  body["balance_usd"] = usd(account.balance_micros);
  body["available_usd"] = usd(account.available_micros);
  return body.dump();
}

// {"object":"list","total_usage":cents,"daily_costs":[{"timestamp":unix s of the UTC day,
// "line_items":[{"name":"usage","cost":cents}]}]}
std::string DashboardUsageBody(const UsageResult& usage) {
  auto cents = [](int64_t micros) { return static_cast<double>(micros) / 1e4; };
  nlohmann::ordered_json daily = nlohmann::ordered_json::array();
  int64_t total = 0;
  for (const auto& d : usage.days) {
    auto day = ParseDay(d.day);
    nlohmann::ordered_json item;
    item["name"] = "usage";
    item["cost"] = cents(d.cost_micros);
    nlohmann::ordered_json entry;
    entry["timestamp"] =
        day ? std::chrono::duration_cast<std::chrono::seconds>(day->time_since_epoch()).count() : 0;
    entry["line_items"] = nlohmann::ordered_json::array();
    entry["line_items"].push_back(std::move(item));
    daily.push_back(std::move(entry));
    total += d.cost_micros;
  }
  nlohmann::ordered_json body;
  body["object"] = "list";
  body["total_usage"] = cents(total);
  body["daily_costs"] = std::move(daily);
  return body.dump();
}

// The caller's usage for `range` (every key of its user unless `key_only`), or nothing once the
// error went out.
awaitable<std::optional<UsageResult>> GetUsage(Exchange& x, const Principal& who, bool key_only,
                                               const DayRange& range) {
  Eventual<UsageResult> got(co_await asio::this_coro::executor);
  x.edge.clients.billing.GetUsage(who, key_only, range.from, range.to, got.Setter());
  UsageResult usage = co_await got.Wait();
  if (usage.failure) {
    co_await x.SendError(usage.failure->code, usage.failure->message);
    co_return std::nullopt;
  }
  co_return usage;
}

}  // namespace

// GET /v1/usage[?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD | ?date=YYYY-MM-DD]: the calling
// key's own usage per UTC day, both days inclusive (default: this month so far); see
// OwnUsageBody.
awaitable<void> OwnUsage(Exchange& x) {
  DayRange range = OwnUsageRange(x.request.target);
  if (!range.error.empty()) {
    co_await x.SendError(ErrorCode::kInvalidRequest, range.error, range.param);
    co_return;
  }
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  std::optional<UsageResult> usage = co_await GetUsage(x, *who, /*key_only=*/true, range);
  if (!usage) co_return;
  co_await x.SendJson(OwnUsageBody(*usage, range));
}

// GET /dashboard/billing/subscription, as OpenAI-compatible chat front-ends read it: the
// caller's user's prepaid account (SubscriptionBody).
awaitable<void> BillingSubscription(Exchange& x) {
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  Eventual<AccountResult> got(co_await asio::this_coro::executor);
  x.edge.clients.billing.GetAccount(*who, got.Setter());
  AccountResult account = co_await got.Wait();
  if (account.failure) {
    co_await x.SendError(account.failure->code, account.failure->message);
    co_return;
  }
  co_await x.SendJson(SubscriptionBody(account));
}

// GET /dashboard/billing/usage?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD (end exclusive, as
// OpenAI's; at most 100 days): the caller's user's cost in cents, per UTC day.
awaitable<void> BillingUsage(Exchange& x) {
  DayRange range = DashboardRange(x.request.target);
  if (!range.error.empty()) {
    co_await x.SendError(ErrorCode::kInvalidRequest, range.error, range.param);
    co_return;
  }
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  std::optional<UsageResult> usage = co_await GetUsage(x, *who, /*key_only=*/false, range);
  if (!usage) co_return;
  co_await x.SendJson(DashboardUsageBody(*usage));
}

}  // namespace tollgate::edge
