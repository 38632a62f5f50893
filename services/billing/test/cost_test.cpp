// Cost arithmetic against hand-computed values (integer micro-units, one rounding up).
#include "tollgate/billing/cost.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>

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

// Unit prices (issue #12): dall-e-3 at $0.04 / $0.08 (hd) per 1024x1024 image, $0.12 for hd
// 1792x1024; whisper-1 at $0.006 per minute; tts-1 at $15 per 1M characters.
Rates MediaRates() {
  Rates r;
  r.images = {{"", "", 40'000},
              {"1024x1024", "hd", 80'000},
              {"1792x1024", "hd", 120'000},
              {"1792x1024", "", 80'000},
              {"", "low", 10'000}};
  r.audio_micros_per_minute = 6'000;
  r.micros_per_mchar = 15'000'000;
  return r;
}

TEST(CostTest, TheMostSpecificImagePriceApplies) {
  const Rates r = MediaRates();
  EXPECT_EQ(ImagePriceMicros(r.images, "1024x1024", "hd"), 80'000);        // both
  EXPECT_EQ(ImagePriceMicros(r.images, "1792x1024", "standard"), 80'000);  // size, any quality
  EXPECT_EQ(ImagePriceMicros(r.images, "1024x1024", "low"), 10'000);       // any size, quality
  EXPECT_EQ(ImagePriceMicros(r.images, "512x512", "standard"), 40'000);    // any, any
  EXPECT_EQ(ImagePriceMicros({}, "1024x1024", "hd"), 0);
  EXPECT_EQ(ImagePriceMicros({{"1024x1024", "", 5}}, "256x256", ""), 0);  // nothing matches
}

TEST(CostTest, UnitsAreChargedWhenNoTokensWereReported) {
  const Rates r = MediaRates();
  // 3 hd 1024x1024 images: 240,000.
  EXPECT_EQ(RecordCostMicros(r, {}, false, {3, "1024x1024", "hd", 0, 0}, kMultiplierOne), 240'000);
  // 90.5 s of audio at 6000 per minute: 9050 exactly; 1 ms more rounds up.
  EXPECT_EQ(RecordCostMicros(r, {}, false, {0, "", "", 90'500, 0}, kMultiplierOne), 9'050);
  EXPECT_EQ(RecordCostMicros(r, {}, false, {0, "", "", 90'501, 0}, kMultiplierOne), 9'051);
  // 1000 characters at $15 / 1M: 15,000; 1 character: 15.
  EXPECT_EQ(RecordCostMicros(r, {}, false, {0, "", "", 0, 1000}, kMultiplierOne), 15'000);
  EXPECT_EQ(RecordCostMicros(r, {}, false, {0, "", "", 0, 1}, kMultiplierOne), 15);
  // Multipliers after the units: x1.5 user, x2 tier.
  EXPECT_EQ(RecordCostMicros(r, {}, false, {1, "", "", 0, 0}, 1'500'000, 2'000'000), 120'000);
  // Estimated tokens do not displace the units they were estimated for.
  Rates both = r;
  both.input_micros_per_mtok = 5'000'000;
  EXPECT_EQ(RecordCostMicros(both, {100, 0, 0}, true, {1, "", "", 0, 0}, kMultiplierOne), 40'000);
}

TEST(CostTest, ReportedTokensWinOverUnits) {
  // gpt-image-1: $5 / $40 per 1M tokens and per-image prices; the answer reported tokens.
  Rates r = MediaRates();
  r.input_micros_per_mtok = 5'000'000;
  r.output_micros_per_mtok = 40'000'000;
  // 20 * 5 + 4160 * 40 = 166,500,000 / 1M -> 167 (rounded up).
  EXPECT_EQ(RecordCostMicros(r, {20, 4160, 0}, false, {1, "1024x1024", "hd", 0, 0}, kMultiplierOne),
            CostMicros(r, {20, 4160, 0}, kMultiplierOne));
  // Without a token price the units still apply (the model is priced per image only).
  EXPECT_EQ(RecordCostMicros(MediaRates(), {20, 4160, 0}, false, {1, "1024x1024", "hd", 0, 0},
                             kMultiplierOne),
            80'000);
  // Nothing priced by unit: tokens (estimated or not).
  Rates tokens_only{150'000, 600'000, 75'000};
  EXPECT_EQ(
      RecordCostMicros(tokens_only, {1000, 500, 0}, true, {2, "", "", 5000, 7}, kMultiplierOne),
      450);
}

TEST(CostTest, AHoldBoundsEveryRecordOfTheSameRequest) {
  Rates r = MediaRates();
  r.input_micros_per_mtok = 5'000'000;
  r.output_micros_per_mtok = 40'000'000;
  // n = 4 images, any size or quality: 4 x the highest per-image price (120,000).
  const int64_t hold = HoldMicros(r, 100, 4 * 10'000, {4, "", "", 0, 0}, kMultiplierOne);
  EXPECT_EQ(hold, std::max<int64_t>(480'000, CostMicros(r, {100, 40'000, 0}, kMultiplierOne)));
  for (const char* size : {"1024x1024", "1792x1024", "512x512"})
    for (const char* quality : {"hd", "standard", "low", ""})
      for (int64_t n = 0; n <= 4; ++n) {
        EXPECT_LE(RecordCostMicros(r, {}, false, {n, size, quality, 0, 0}, kMultiplierOne), hold);
        EXPECT_LE(RecordCostMicros(r, {100, n * 10'000, 0}, false, {n, size, quality, 0, 0},
                                   kMultiplierOne),
                  hold);
      }
  // Audio: the duration bound.
  const int64_t audio = HoldMicros(r, 0, 0, {0, "", "", 600'000, 0}, kMultiplierOne);
  EXPECT_EQ(audio, 60'000);
  EXPECT_LE(RecordCostMicros(r, {}, true, {0, "", "", 599'999, 0}, kMultiplierOne), audio);
}

TEST(CostTest, UnitBoundsSaturateInsteadOfOverflowing) {
  Rates r;
  r.images = {{"", "", kMaxPriceMicros}};
  r.audio_micros_per_minute = kMaxPriceMicros;
  r.micros_per_mchar = kMaxPriceMicros;
  const UnitCounts huge{INT64_MAX, "", "", INT64_MAX, INT64_MAX};
  EXPECT_EQ(RecordCostMicros(r, {}, false, huge, kMaxMultiplierPpm, kMaxServiceTierMultiplierPpm),
            std::numeric_limits<int64_t>::max());
  EXPECT_EQ(RecordCostMicros(r, {}, false, {-3, "", "", -1, -1}, kMultiplierOne), 0);
}

TEST(CostTest, ImagePricesParseFromTheCommandLineForm) {
  auto hd = ParseImageRate("1024x1024/hd=80000");
  ASSERT_TRUE(hd);
  EXPECT_EQ(hd->size, "1024x1024");
  EXPECT_EQ(hd->quality, "hd");
  EXPECT_EQ(hd->micros_per_image, 80'000);
  auto any = ParseImageRate("*/*=40000");
  ASSERT_TRUE(any);
  EXPECT_EQ(any->size, "");
  EXPECT_EQ(any->quality, "");
  auto size_only = ParseImageRate("256x256=16000");
  ASSERT_TRUE(size_only);
  EXPECT_EQ(size_only->quality, "");
  EXPECT_EQ(FormatImageRate(*hd), "1024x1024/hd=80000");
  EXPECT_EQ(FormatImageRate(*any), "*/*=40000");
  for (const char* bad : {"", "=5", "1024x1024/hd=", "1024x1024/hd=-1", "1024x1024/hd=1e3",
                          "a/b/c=1", "1024x1024/hd=99999999999999"})
    EXPECT_FALSE(ParseImageRate(bad)) << bad;
}

}  // namespace
}  // namespace tollgate::billing
