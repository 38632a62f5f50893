// Cost arithmetic against hand-computed values (integer micro-units, one rounding up).
#include "tollgate/billing/cost.h"

#include <gtest/gtest.h>

namespace tollgate::billing {
namespace {

// $0.15 / $0.60 / $0.075 per 1M tokens (input / output / cached input).
constexpr Rates kMini{150'000, 600'000, 75'000};

TEST(CostTest, PlainTokensAtTheListPrice) {
  // 1000 * 150000 + 500 * 600000 = 450,000,000 micro-units per 1M tokens = 450 micro-units.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 0}, kMultiplierOne), 450);
  // 1M prompt tokens at 2,500,000: exactly 2,500,000, nothing rounded.
  EXPECT_EQ(CostMicros({2'500'000, 0, 0}, {1'000'000, 0, 0}, kMultiplierOne), 2'500'000);
  EXPECT_EQ(CostMicros(kMini, {0, 0, 0}, kMultiplierOne), 0);
}

TEST(CostTest, CachedTokensAreBilledAtTheCachedPrice) {
  // 600 uncached * 150000 + 400 cached * 75000 + 500 * 600000 = 420,000,000 -> 420.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 400}, kMultiplierOne), 420);
  // Cached beyond the prompt counts as the whole prompt: 100 * 75000 = 7.5 -> 8.
  EXPECT_EQ(CostMicros(kMini, {100, 0, 500}, kMultiplierOne), 8);
  // Negative counts count as 0.
  EXPECT_EQ(CostMicros(kMini, {-5, 10, -3}, kMultiplierOne), 6);
}

TEST(CostTest, CacheWritesAreBilledAtTheCacheWritePrice) {
  // Claude Haiku 4.5-like: $1 input, $5 output, $0.10 cache read, $1.25 cache write per 1M.
  constexpr Rates kHaiku{1'000'000, 5'000'000, 100'000, 1'250'000};
  // 100 plain + 2000 read + 1000 written, 10 out:
  // 100 * 1e6 + 2000 * 1e5 + 1000 * 1.25e6 + 10 * 5e6 = 1,600,000,000 -> 1600.
  EXPECT_EQ(CostMicros(kHaiku, {3100, 10, 2000, 1000}, kMultiplierOne), 1600);
  // The same prompt charged as plain input (no cache-write price: the input price) is less.
  constexpr Rates kPlainWrites{1'000'000, 5'000'000, 100'000, 1'000'000};
  EXPECT_EQ(CostMicros(kPlainWrites, {3100, 10, 2000, 1000}, kMultiplierOne), 1350);
  // Writes are the rest of the prompt at most (after the reads): 100 read + 900 written,
  // 100 * 1e5 + 900 * 1.25e6 = 1,135,000,000 -> 1135.
  EXPECT_EQ(CostMicros(kHaiku, {1000, 0, 100, 5000}, kMultiplierOne), 1135);
  // Negative writes count as 0; the user's and the tier's multipliers apply to them too.
  EXPECT_EQ(CostMicros(kHaiku, {1000, 0, 0, -7}, kMultiplierOne), 1000);
  EXPECT_EQ(CostMicros(kHaiku, {1000, 0, 0, 1000}, 2'000'000, 1'500'000), 3750);
}

TEST(CostTest, HoldBoundsTheCostWhateverTheCacheDoes) {
  constexpr Rates kHaiku{1'000'000, 5'000'000, 100'000, 1'250'000};
  // The prompt at the dearest prompt price (here the cache write's): 1000 * 1.25 + 100 * 5.
  const int64_t hold = HoldMicros(kHaiku, 1000, 100, kMultiplierOne);
  EXPECT_EQ(hold, 1750);
  for (int64_t written : {0, 1, 500, 1000})
    for (int64_t read : {int64_t{0}, 1000 - written})
      EXPECT_LE(CostMicros(kHaiku, {1000, 100, read, written}, kMultiplierOne), hold);
}

TEST(CostTest, MultiplierIsAppliedBeforeTheOneRounding) {
  // x1.5: 420 * 1.5 = 630 exactly.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 400}, 1'500'000), 630);
  // 3 tokens at 1,000,001 per 1M = 3.000003; x1.5 = 4.5000045 -> 5. Rounding first
  // (ceil(3.000003) = 4, then x1.5 = 6) would overcharge: one rounding, at the end.
  EXPECT_EQ(CostMicros({1'000'001, 0, 0}, {3, 0, 0}, 1'500'000), 5);
  // x0.5 on 450 -> 225.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 0}, 500'000), 225);
}

TEST(CostTest, AnyPricedUseCostsAtLeastOneMicroUnit) {
  // 1 token at 150000 per 1M = 0.15 micro-units -> 1.
  EXPECT_EQ(CostMicros(kMini, {1, 0, 0}, kMultiplierOne), 1);
  // 1 micro-unit less than a whole one is still rounded up: 999,999 / 1e6 -> 1.
  EXPECT_EQ(CostMicros({999'999, 0, 0}, {1, 0, 0}, kMultiplierOne), 1);
  // 1,000,001 / 1e6 -> 2.
  EXPECT_EQ(CostMicros({1'000'001, 0, 0}, {1, 0, 0}, kMultiplierOne), 2);
}

TEST(CostTest, TheLargestInputsDoNotOverflow) {
  // 1e9 prompt + 1e9 completion tokens at 1e12 per 1M, x1000: 2e21 * 1000 / 1e6 = 2e18.
  Rates max{kMaxPriceMicros, kMaxPriceMicros, kMaxPriceMicros};
  EXPECT_EQ(CostMicros(max, {kMaxTokens, kMaxTokens, 0}, kMaxMultiplierPpm),
            2'000'000'000'000'000'000);
  // Beyond the bounds everything is clamped, never wrapped.
  EXPECT_EQ(CostMicros(max, {INT64_MAX, INT64_MAX, 0}, INT64_MAX), 2'000'000'000'000'000'000);
}

TEST(CostTest, ServiceTierMultiplierMultipliesBeforeTheOneRounding) {
  // priority x2: 450 -> 900; with the user's x1.5 too: 420 (cached) * 1.5 * 2 = 1260.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 0}, kMultiplierOne, 2'000'000), 900);
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 400}, 1'500'000, 2'000'000), 1260);
  // flex x0.5 for a user at x1.2: 450 * 1.2 * 0.5 = 270.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 0}, 1'200'000, 500'000), 270);
  // The tier's x1 is the old formula: nothing changes for the default tier.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 400}, 1'500'000, kMultiplierOne),
            CostMicros(kMini, {1000, 500, 400}, 1'500'000));
  // 10 tokens at 150000 per 1M = 1.5; x2 = 3 exactly. Rounding per multiplier (ceil(1.5) = 2,
  // then x2 = 4) would overcharge.
  EXPECT_EQ(CostMicros(kMini, {10, 0, 0}, kMultiplierOne, 2'000'000), 3);
  // 1 token at 150000 per 1M x1.5 x0.5 = 0.1125 -> 1.
  EXPECT_EQ(CostMicros(kMini, {1, 0, 0}, 1'500'000, 500'000), 1);
  // 7 tokens at 1,000,001 per 1M = 7.000007; x1.3 x1.7 = 15.47001547 -> 16.
  EXPECT_EQ(CostMicros({1'000'001, 0, 0}, {7, 0, 0}, 1'300'000, 1'700'000), 16);
}

TEST(CostTest, TheLargestInputsWithATierMultiplierSaturateNeverWrap) {
  Rates max{kMaxPriceMicros, kMaxPriceMicros, kMaxPriceMicros};
  // 2e21 * x1000 * x100 / 1e6 = 2e20 micro-units: beyond int64, so the most int64 holds.
  EXPECT_EQ(
      CostMicros(max, {kMaxTokens, kMaxTokens, 0}, kMaxMultiplierPpm, kMaxServiceTierMultiplierPpm),
      INT64_MAX);
  EXPECT_EQ(CostMicros(max, {INT64_MAX, INT64_MAX, 0}, INT64_MAX, INT64_MAX), INT64_MAX);
  // Just inside: 1e9 prompt tokens at 1e12 per 1M, x1 user, x4 tier = 1e15 * 4 = 4e15.
  EXPECT_EQ(CostMicros({kMaxPriceMicros, 0, 0}, {kMaxTokens, 0, 0}, kMultiplierOne, 4'000'000),
            4'000'000'000'000'000);
  // A tier above its bound counts as the bound (x100): 450 * 100 = 45000.
  EXPECT_EQ(CostMicros(kMini, {1000, 500, 0}, kMultiplierOne, kMaxServiceTierMultiplierPpm + 1),
            45'000);
}

TEST(CostTest, PricingTiers) {
  EXPECT_EQ(PricingTier(""), "default");
  EXPECT_EQ(PricingTier("fast"), "priority") << "OpenAI answers fast requests as priority";
  EXPECT_EQ(PricingTier("priority"), "priority");
  EXPECT_EQ(PricingTier("flex"), "flex");
  std::map<std::string, int64_t> m = {{"priority", 2'000'000}, {"flex", 500'000}};
  EXPECT_EQ(TierMultiplier(m, "priority"), 2'000'000);
  EXPECT_EQ(TierMultiplier(m, "fast"), 2'000'000);
  EXPECT_EQ(TierMultiplier(m, "flex"), 500'000);
  EXPECT_EQ(TierMultiplier(m, ""), kMultiplierOne) << "no row for default: x1";
  EXPECT_EQ(TierMultiplier(m, "scale"), kMultiplierOne) << "unknown tier: x1";
}

TEST(CostTest, HoldIsTheWorstCase) {
  // Estimate 1000 prompt tokens, up to 500 completion tokens: 450, as if nothing were cached.
  EXPECT_EQ(HoldMicros(kMini, 1000, 500, kMultiplierOne), 450);
  EXPECT_EQ(HoldMicros(kMini, 1000, 500, 2'000'000), 900);
  EXPECT_EQ(HoldMicros(kMini, 1000, 500, 1'500'000, 2'000'000), 1350);
}

TEST(SelectPriceTest, NewestInEffectProviderSpecificFirst) {
  std::vector<PriceRecord> prices = {
      {1, "m", "", {100, 200, 50}, 1000},
      {2, "m", "", {110, 220, 55}, 5000},
      {3, "m", "azure", {90, 180, 45}, 2000},
  };
  EXPECT_FALSE(SelectPrice(prices, "", 999).has_value()) << "nothing in effect yet";
  EXPECT_EQ(SelectPrice(prices, "", 1000)->id, 1);
  EXPECT_EQ(SelectPrice(prices, "", 4999)->id, 1);
  EXPECT_EQ(SelectPrice(prices, "", 5000)->id, 2);
  EXPECT_EQ(SelectPrice(prices, "openai", 6000)->id, 2) << "no openai price: the default";
  EXPECT_EQ(SelectPrice(prices, "azure", 1500)->id, 1) << "azure's own price is not in effect";
  EXPECT_EQ(SelectPrice(prices, "azure", 6000)->id, 3) << "a provider's own price wins";
  EXPECT_FALSE(SelectPrice({}, "", 6000).has_value());
}

}  // namespace
}  // namespace tollgate::billing
