// What an API key permits, as pure logic shared by the auth service and the edge (which caches
// principals and decides warm requests itself): key generation and hashing, the statuses, the
// verdict for a request (status, expiry, user, client IP), model wildcards and CIDR matching.
// No I/O, no gRPC, no database.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::auth {

enum class KeyStatus { kActive, kDisabled, kRevoked };
enum class UserStatus { kActive, kDisabled };

// "active", "disabled", "revoked": the database spelling.
std::string_view KeyStatusName(KeyStatus status);
std::optional<KeyStatus> ParseKeyStatus(std::string_view name);
std::string_view UserStatusName(UserStatus status);
std::optional<UserStatus> ParseUserStatus(std::string_view name);

// ---- keys -----------------------------------------------------------------------------------

inline constexpr std::string_view kKeyPrefix = "sk-tg-";
inline constexpr size_t kKeyRandomChars = 43;  // base62: 43 * log2(62) ≈ 256 bits

// "sk-tg-" + 43 base62 characters from OpenSSL's CSPRNG. Throws std::runtime_error if the
// RNG fails.
std::string GenerateApiKey();
// True for something shaped like a Tollgate key (prefix, length, alphabet): anything else is
// refused without a lookup.
bool LooksLikeApiKey(std::string_view key);
// SHA-256 of the key, 32 raw bytes: what is stored and looked up.
std::string HashApiKey(std::string_view key);
// Constant-time equality of two byte strings of equal length (CRYPTO_memcmp).
bool SecureEquals(std::string_view a, std::string_view b);
// What an operator sees of a key: "sk-tg-Ab3x..." (the prefix and 4 random characters).
std::string DisplayPrefix(std::string_view key);
// How a key a client presented is quoted back in an error: "sk-tg-Ab***yz"; "***" when too
// short to show any of it safely.
std::string MaskApiKey(std::string_view key);

// ---- networks ------------------------------------------------------------------------------

// An IPv4 address is kept as an IPv4-mapped IPv6 address (::ffff:a.b.c.d), so one comparison
// serves both families and a dual-stack socket's "::ffff:10.1.2.3" matches "10.0.0.0/8".
struct IpAddress {
  std::array<uint8_t, 16> bytes{};
  bool v4 = false;
  bool operator==(const IpAddress&) const = default;
};

struct Cidr {
  IpAddress network;  // host bits zero
  int prefix = 0;     // in the address's own family: 0..32 for IPv4, 0..128 for IPv6
  bool operator==(const Cidr&) const = default;
};

std::optional<IpAddress> ParseIp(std::string_view text);
// Canonical text of one address: "10.1.2.3" (an IPv4-mapped address in its IPv4 form),
// "2001:db8::1" (lower case, zeros compressed), so one address always has one spelling.
std::string FormatIp(const IpAddress& ip);
// "10.0.0.0/8", "2001:db8::/32", or one address ("10.1.2.3" = /32, "::1" = /128). Host bits set
// ("10.0.0.1/8") are an error, as PostgreSQL's cidr type has it; `error` says why.
std::optional<Cidr> ParseCidr(std::string_view text, std::string* error = nullptr);
// Canonical text: "10.0.0.0/8", "2001:db8::/32".
std::string FormatCidr(const Cidr& cidr);
bool Contains(const Cidr& cidr, const IpAddress& ip);

// ---- models --------------------------------------------------------------------------------

// True when `model` matches one of `patterns` (exact, or "*" standing for any run of
// characters: "gpt-4o*", "*-mini", "*"); an empty list allows every model.
bool ModelAllowed(const std::vector<std::string>& patterns, std::string_view model);
// A pattern an operator may store: 1..256 characters, no spaces or control characters.
bool ValidModelPattern(std::string_view pattern);

// ---- the verdict ----------------------------------------------------------------------------

// What is known about one key, whoever holds it (auth's cache, an edge's cache).
struct KeyPrincipal {
  int64_t key_id = 0;
  int64_t user_id = 0;
  std::string key_name;
  KeyStatus status = KeyStatus::kActive;
  UserStatus user_status = UserStatus::kActive;
  int64_t expires_at = 0;  // unix seconds; 0: never
  std::vector<std::string> allowed_models;
  std::vector<std::string> allowed_cidrs;  // canonical text
  std::vector<Cidr> networks;              // allowed_cidrs, parsed
  std::string limits_ref;
  bool store_bodies = false;
  int64_t version = 0;
  bool operator==(const KeyPrincipal&) const = default;
};

// Parses allowed_cidrs into networks and returns the entries that do not parse. Evaluate goes by
// allowed_cidrs being non-empty, so a bad entry matches nobody and never widens the list to "any".
std::vector<std::string> ParseNetworks(KeyPrincipal& principal);

enum class Verdict {
  kOk,
  kUnknownKey,
  kKeyDisabled,
  kKeyRevoked,
  kKeyExpired,
  kUserDisabled,
  kIpNotAllowed,
};

std::string_view VerdictName(Verdict verdict);

// The checks in order: revoked, disabled, expired, user disabled, client IP. An unparsable
// client IP fails a non-empty IP allowlist.
Verdict Evaluate(const KeyPrincipal& principal, std::string_view client_ip, int64_t now_unix_s);

}  // namespace tollgate::auth
