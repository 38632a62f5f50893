// Cost arithmetic: integers only, one rounding. The one implementation of pricing (price lookup,
// worst case, actual cost): billing links it, and so does the edge, which prices the requests it
// admits from budgets itself with the prices billing sends it (tollgate_billing_pricing: pure
// logic, no I/O).
//
// Prices are micro-units per 1,000,000 tokens; the multipliers (the user's and
// the service tier's) are in parts per million (1,000,000 = x1). For a record
// with prompt tokens P (of which C were served from the provider's cache and W
// written to it) and completion tokens O:
//
//   cost_micros = ceil( ((P - C - W) * input + C * cached_input + W * cache_write
//                        + O * output)
//                       * multiplier_ppm * tier_multiplier_ppm
//                       / (1,000,000 * 1,000,000 * 1,000,000) )
//
// computed exactly in 128-bit integers and rounded once, up, to a whole
// micro-unit: a request that used anything priced costs at least 1 micro-unit,
// and no sum of per-record roundings can drift below the exact total by more
// than one micro-unit per record. C is clamped to [0, P], W to [0, P - C]; negative counts count
// as 0; counts, prices and multipliers above their bounds count as the bound, so
// the product (at most 2e21 * 1e9 * 1e8 = 2e38 < 2^128) cannot overflow; a cost
// beyond int64 saturates.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tollgate::billing {

inline constexpr int64_t kMicrosPerUnit = 1'000'000;
inline constexpr int64_t kTokensPerPrice = 1'000'000;  // prices are per 1M tokens
inline constexpr int64_t kMultiplierOne = 1'000'000;   // ppm
inline constexpr int64_t kMaxTokens = 1'000'000'000;
inline constexpr int64_t kMaxPriceMicros = 1'000'000'000'000;         // per 1M tokens
inline constexpr int64_t kMaxMultiplierPpm = 1'000'000'000;           // x1000
inline constexpr int64_t kMaxServiceTierMultiplierPpm = 100'000'000;  // x100

// One per-image price; an empty size or quality matches any.
struct ImageRate {
  std::string size;
  std::string quality;
  int64_t micros_per_image = 0;
};

struct Rates {
  int64_t input_micros_per_mtok = 0;
  int64_t output_micros_per_mtok = 0;
  int64_t cached_input_micros_per_mtok = 0;
  // Prompt-cache writes (Anthropic's cache_creation_input_tokens).
  int64_t cache_write_micros_per_mtok = 0;
  // Unit prices (issue #12): per image, per minute of audio, per 1M characters.
  std::vector<ImageRate> images;
  int64_t audio_micros_per_minute = 0;
  int64_t micros_per_mchar = 0;
};

struct TokenCounts {
  int64_t prompt = 0;
  int64_t completion = 0;
  int64_t cached = 0;       // part of prompt, read from the provider's cache
  int64_t cache_write = 0;  // part of prompt, written to the provider's cache
};

int64_t CostMicros(const Rates& rates, const TokenCounts& tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm = kMultiplierOne);

// What endpoints beyond chat bill by (issue #12): images with their size and quality, audio
// duration, input characters.
inline constexpr int64_t kMaxUnits = 1'000'000'000;  // images, characters, audio milliseconds
struct UnitCounts {
  int64_t images = 0;
  std::string image_size;
  std::string image_quality;
  int64_t audio_ms = 0;
  int64_t characters = 0;
};

// The per-image price for `size` and `quality`: the most specific row (both match exactly, then
// size with any quality, then any size with the quality, then any/any); 0 when none matches.
int64_t ImagePriceMicros(const std::vector<ImageRate>& rates, const std::string& size,
                         const std::string& quality);

// A record's cost when it may carry units:
//   - tokens the upstream reported (not estimated), on a model with a token price: tokens only
//     (gpt-image-1, gpt-4o-transcribe and gpt-4o-mini-tts report usage: "tokens win");
//   - else units, when they cost anything: images x ImagePriceMicros + ceil(audio_ms x per-minute
//     / 60000) + ceil(characters x per-1M-chars / 1e6);
//   - else tokens (estimated or not), as CostMicros.
// Times both multipliers, rounded up once; bounded like CostMicros (units at kMaxUnits).
int64_t RecordCostMicros(const Rates& rates, const TokenCounts& tokens, bool tokens_estimated,
                         const UnitCounts& units, int64_t multiplier_ppm,
                         int64_t tier_multiplier_ppm = kMultiplierOne);

// The worst case a hold reserves: the whole prompt estimate at the dearest of
// the prompt prices (input, cached input, cache write: the upstream decides
// which applies) and every allowed completion token.
int64_t HoldMicros(const Rates& rates, int64_t estimated_prompt_tokens,
                   int64_t max_completion_tokens, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm = kMultiplierOne);

// The worst case of a request that may be billed by units: the larger of the token worst case
// (HoldMicros) and the units at their highest price (every image at the model's highest per-image
// price, whatever size and quality the answer reports), so it bounds RecordCostMicros for any
// tokens up to the estimates and units up to `units`.
int64_t HoldMicros(const Rates& rates, int64_t estimated_prompt_tokens,
                   int64_t max_completion_tokens, const UnitCounts& units, int64_t multiplier_ppm,
                   int64_t tier_multiplier_ppm = kMultiplierOne);

// The service tier whose multiplier prices a request: "" (none reported or
// asked for) is "default"; "fast" is OpenAI's other name for "priority" (its
// answers report "priority"). Any other tier is itself.
std::string PricingTier(const std::string& tier);

// A tier's multiplier among `multipliers` (tier -> ppm); a tier without one is x1.
int64_t TierMultiplier(const std::map<std::string, int64_t>& multipliers, const std::string& tier);

// The tier multiplier a hold (a worst case) for `tier` is priced with: the larger of its own and
// the default tier's, since the upstream serves the tier asked for or falls back to its default
// one, so the hold is never below the record's cost for the same tokens.
int64_t HoldTierMultiplier(const std::map<std::string, int64_t>& multipliers,
                           const std::string& tier);

// "SIZE/QUALITY=MICROS" ("1024x1024/hd=80000"; "*" or an omitted "/QUALITY" is any): one
// per-image price as tollgatectl sets it; nullopt when malformed or out of bounds.
std::optional<ImageRate> ParseImageRate(const std::string& text);
std::string FormatImageRate(const ImageRate& rate);

struct PriceRecord {
  int64_t id = 0;
  std::string model;
  std::string provider;  // empty: any provider
  Rates rates;
  int64_t effective_from_ms = 0;
};

// The price that applies to a request on `provider` at `at_ms` among one
// model's prices: the newest one in effect with that provider, else the newest
// one in effect for any provider (provider ""). nullopt: the model is unpriced.
std::optional<PriceRecord> SelectPrice(const std::vector<PriceRecord>& prices,
                                       const std::string& provider, int64_t at_ms);

}  // namespace tollgate::billing
