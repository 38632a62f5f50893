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

namespace {

// The unit prices' common denominator: per-minute prices are charged by the millisecond (60000)
// and per-1M-character prices by the character (1e6).
constexpr U128 kUnitScale = static_cast<U128>(60'000) * 1'000'000;

// The units' cost before the multipliers, rounded up to a whole micro-unit (at most
// 3 x 1e9 x 1e12 = 3e21), then times both multipliers (at most 1e17: 3e38 < 2^128) and rounded
// up once more: never below the exact cost.
int64_t UnitCost(int64_t image_micros, const Rates& rates, const UnitCounts& units,
                 int64_t multiplier_ppm, int64_t tier_multiplier_ppm) {
  const U128 images = Clamp(units.images, kMaxUnits);
  const U128 per_image = Clamp(image_micros, kMaxPriceMicros);
  const U128 ms = Clamp(units.audio_ms, kMaxUnits);
  const U128 per_minute = Clamp(rates.audio_micros_per_minute, kMaxPriceMicros);
  const U128 chars = Clamp(units.characters, kMaxUnits);
  const U128 per_mchar = Clamp(rates.micros_per_mchar, kMaxPriceMicros);
  // Each product is at most 1e9 x 1e12 x 6e10 = 6e31: exact.
  const U128 scaled =
      images * per_image * kUnitScale + ms * per_minute * 1'000'000 + chars * per_mchar * 60'000;
  if (scaled == 0) return 0;
  const U128 micros = scaled / kUnitScale + (scaled % kUnitScale != 0 ? 1 : 0);
  const U128 mult = Clamp(multiplier_ppm, kMaxMultiplierPpm);
  const U128 tier = Clamp(tier_multiplier_ppm, kMaxServiceTierMultiplierPpm);
  return CeilDiv(micros * mult * tier, static_cast<U128>(kMultiplierOne) * kMultiplierOne);
}

static_assert(static_cast<U128>(3) * kMaxUnits * kMaxPriceMicros <=
                  ~static_cast<U128>(0) / kMaxMultiplierPpm / kMaxServiceTierMultiplierPpm,
              "unit cost bounds overflow 128 bits");

}  // namespace

std::optional<ImageRate> ParseImageRate(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 >= text.size() || text.size() > 200)
    return std::nullopt;
  std::string key = text.substr(0, eq);
  const std::string value = text.substr(eq + 1);
  if (value.find_first_not_of("0123456789") != std::string::npos || value.size() > 13)
    return std::nullopt;
  ImageRate rate;
  rate.micros_per_image = std::stoll(value);
  if (rate.micros_per_image > kMaxPriceMicros) return std::nullopt;
  const size_t slash = key.find('/');
  rate.size = key.substr(0, slash);
  rate.quality = slash == std::string::npos ? "" : key.substr(slash + 1);
  for (std::string* part : {&rate.size, &rate.quality}) {
    if (*part == "*") part->clear();
    if (part->find_first_of("/=* ") != std::string::npos) return std::nullopt;
  }
  return rate;
}

std::string FormatImageRate(const ImageRate& rate) {
  return (rate.size.empty() ? "*" : rate.size) + "/" + (rate.quality.empty() ? "*" : rate.quality) +
         "=" + std::to_string(rate.micros_per_image);
}

int64_t ImagePriceMicros(const std::vector<ImageRate>& rates, const std::string& size,
                         const std::string& quality) {
  int best = -1;
  int64_t price = 0;
  for (const auto& r : rates) {
    if (!r.size.empty() && r.size != size) continue;
    if (!r.quality.empty() && r.quality != quality) continue;
    const int rank = (r.size.empty() ? 0 : 2) + (r.quality.empty() ? 0 : 1);
    if (rank > best) {
      best = rank;
      price = r.micros_per_image;
    }
  }
  return price;
}

int64_t RecordCostMicros(const Rates& rates, const TokenCounts& tokens, bool tokens_estimated,
                         const UnitCounts& units, int64_t multiplier_ppm,
                         int64_t tier_multiplier_ppm) {
  const bool token_priced = rates.input_micros_per_mtok > 0 || rates.output_micros_per_mtok > 0;
  const bool reported = !tokens_estimated && (tokens.prompt > 0 || tokens.completion > 0);
  if (!(reported && token_priced)) {
    const int64_t image = ImagePriceMicros(rates.images, units.image_size, units.image_quality);
    const int64_t unit_cost = UnitCost(image, rates, units, multiplier_ppm, tier_multiplier_ppm);
    if (unit_cost > 0) return unit_cost;
  }
  return CostMicros(rates, tokens, multiplier_ppm, tier_multiplier_ppm);
}

int64_t HoldMicros(const Rates& rates, int64_t estimated_prompt_tokens,
                   int64_t max_completion_tokens, const UnitCounts& units, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm) {
  int64_t highest_image = 0;
  for (const auto& r : rates.images) highest_image = std::max(highest_image, r.micros_per_image);
  return std::max(HoldMicros(rates, estimated_prompt_tokens, max_completion_tokens, multiplier_ppm,
                             tier_multiplier_ppm),
                  UnitCost(highest_image, rates, units, multiplier_ppm, tier_multiplier_ppm));
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

int64_t HoldTierMultiplier(const std::map<std::string, int64_t>& multipliers,
                           const std::string& tier) {
  return std::max(TierMultiplier(multipliers, tier), TierMultiplier(multipliers, ""));
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
