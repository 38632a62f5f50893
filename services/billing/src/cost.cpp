#include "tollgate/billing/cost.h"

#include <algorithm>
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

// The largest product below fits: 2 * max tokens * max price, times both multipliers.
static_assert(static_cast<U128>(2) * kMaxTokens * kMaxPriceMicros <=
                  ~static_cast<U128>(0) / kMaxMultiplierPpm / kMaxServiceTierMultiplierPpm,
              "cost bounds overflow 128 bits");

}  // namespace

int64_t CostMicros(const Rates& rates, const TokenCounts& tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm) {
  const U128 prompt = Clamp(tokens.prompt, kMaxTokens);
  const U128 cached = std::min<U128>(Clamp(tokens.cached, kMaxTokens), prompt);
  const U128 write = std::min<U128>(Clamp(tokens.cache_write, kMaxTokens), prompt - cached);
  const U128 completion = Clamp(tokens.completion, kMaxTokens);
  const U128 in = Clamp(rates.input_micros_per_mtok, kMaxPriceMicros);
  const U128 out = Clamp(rates.output_micros_per_mtok, kMaxPriceMicros);
  const U128 cached_in = Clamp(rates.cached_input_micros_per_mtok, kMaxPriceMicros);
  const U128 write_in = Clamp(rates.cache_write_micros_per_mtok, kMaxPriceMicros);
  const U128 mult = Clamp(multiplier_ppm, kMaxMultiplierPpm);
  const U128 tier = Clamp(tier_multiplier_ppm, kMaxServiceTierMultiplierPpm);
  // (P - C - W) * in + C * cached_in + W * write_in <= P * 1e12, so the sum is at most 2e21;
  // times both multipliers at most 2e38 < 2^128 (static_assert above): exact.
  const U128 scaled =
      ((prompt - cached - write) * in + cached * cached_in + write * write_in + completion * out) *
      mult * tier;
  return CeilDiv(scaled, static_cast<U128>(kTokensPerPrice) * kMultiplierOne * kMultiplierOne);
}

int64_t HoldMicros(const Rates& rates, int64_t estimated_prompt_tokens,
                   int64_t max_completion_tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm) {
  // Whichever prompt price the answer turns out to use, the hold is not below the cost.
  Rates dearest = rates;
  dearest.input_micros_per_mtok =
      std::max({rates.input_micros_per_mtok, rates.cached_input_micros_per_mtok,
                rates.cache_write_micros_per_mtok});
  return CostMicros(dearest, {estimated_prompt_tokens, max_completion_tokens, 0, 0}, multiplier_ppm,
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

}  // namespace tollgate::billing
