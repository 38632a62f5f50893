#include "tollgate/billing/cost.h"

#include <algorithm>
#include <cstdio>
#include <limits>

namespace tollgate::billing {
namespace {

using U128 = unsigned __int128;

int64_t Clamp(int64_t v, int64_t hi) { return std::clamp<int64_t>(v, 0, hi); }

// ceil(num / den) saturated to int64.
int64_t CeilDiv(U128 num, U128 den) {
  U128 q = num / den + (num % den != 0 ? 1 : 0);
  constexpr U128 kMax = static_cast<U128>(std::numeric_limits<int64_t>::max());
  return static_cast<int64_t>(q > kMax ? kMax : q);
}

// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
void CivilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
}

int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// The largest product below fits: 2 * max tokens * max price, times both multipliers.
static_assert(static_cast<U128>(2) * kMaxTokens * kMaxPriceMicros <=
                  ~static_cast<U128>(0) / kMaxMultiplierPpm / kMaxServiceTierMultiplierPpm,
              "cost bounds overflow 128 bits");

}  // namespace

int64_t CostMicros(const Rates& rates, const TokenCounts& tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm) {
  const U128 prompt = Clamp(tokens.prompt, kMaxTokens);
  const U128 cached = std::min<U128>(Clamp(tokens.cached, kMaxTokens), prompt);
  const U128 completion = Clamp(tokens.completion, kMaxTokens);
  const U128 in = Clamp(rates.input_micros_per_mtok, kMaxPriceMicros);
  const U128 out = Clamp(rates.output_micros_per_mtok, kMaxPriceMicros);
  const U128 cached_in = Clamp(rates.cached_input_micros_per_mtok, kMaxPriceMicros);
  const U128 mult = Clamp(multiplier_ppm, kMaxMultiplierPpm);
  const U128 tier = Clamp(tier_multiplier_ppm, kMaxServiceTierMultiplierPpm);
  // (P - C) * in + C * cached_in <= P * 1e12, so the sum is at most 2e21; times both
  // multipliers at most 2e38 < 2^128 (static_assert above): exact.
  const U128 scaled =
      ((prompt - cached) * in + cached * cached_in + completion * out) * mult * tier;
  return CeilDiv(scaled, static_cast<U128>(kTokensPerPrice) * kMultiplierOne * kMultiplierOne);
}

int64_t HoldMicros(const Rates& rates, int64_t estimated_prompt_tokens,
                   int64_t max_completion_tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm) {
  return CostMicros(rates, {estimated_prompt_tokens, max_completion_tokens, 0}, multiplier_ppm,
                    tier_multiplier_ppm);
}

std::string PricingTier(const std::string& tier) {
  if (tier.empty()) return "default";
  if (tier == "fast") return "priority";
  return tier;
}

int64_t TierMultiplier(const std::map<std::string, int64_t>& multipliers, const std::string& tier) {
  auto it = multipliers.find(PricingTier(tier));
  return it == multipliers.end() ? kMultiplierOne : it->second;
}

std::optional<PriceRecord> SelectPrice(const std::vector<PriceRecord>& prices,
                                       const std::string& provider, int64_t at_ms) {
  const PriceRecord* exact = nullptr;
  const PriceRecord* any = nullptr;
  for (const auto& p : prices) {
    if (p.effective_from_ms > at_ms) continue;
    const PriceRecord** slot = nullptr;
    if (!provider.empty() && p.provider == provider)
      slot = &exact;
    else if (p.provider.empty())
      slot = &any;
    else
      continue;
    if (*slot == nullptr || p.effective_from_ms > (*slot)->effective_from_ms) *slot = &p;
  }
  if (exact) return *exact;
  if (any) return *any;
  return std::nullopt;
}

int64_t UtcDay(int64_t unix_ms) {
  constexpr int64_t kDayMs = 86'400'000;
  return unix_ms >= 0 ? unix_ms / kDayMs : -((-unix_ms + kDayMs - 1) / kDayMs);
}

std::string DayString(int64_t day) {
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(day, y, m, d);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02u", static_cast<long long>(y), m, d);
  return buf;
}

std::optional<int64_t> ParseDay(const std::string& text) {
  int y = 0;
  unsigned m = 0, d = 0;
  int consumed = 0;
  if (text.size() != 10 || std::sscanf(text.c_str(), "%4d-%2u-%2u%n", &y, &m, &d, &consumed) != 3 ||
      consumed != 10)
    return std::nullopt;
  if (m < 1 || m > 12 || d < 1 || d > 31) return std::nullopt;
  int64_t day = DaysFromCivil(y, m, d);
  if (DayString(day) != text) return std::nullopt;  // e.g. 2026-02-30
  return day;
}

}  // namespace tollgate::billing
