#include "tollgate/auth/policy.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <memory>

namespace tollgate::auth {
namespace {

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr size_t kMaxPattern = 256;

bool IsBase62(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// '*' matches any run of characters (the classic two-pointer glob, linear in practice).
bool Glob(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace

std::string_view KeyStatusName(KeyStatus status) {
  switch (status) {
    case KeyStatus::kActive:
      return "active";
    case KeyStatus::kDisabled:
      return "disabled";
    case KeyStatus::kRevoked:
      return "revoked";
  }
  return "revoked";
}

std::optional<KeyStatus> ParseKeyStatus(std::string_view name) {
  if (name == "active") return KeyStatus::kActive;
  if (name == "disabled") return KeyStatus::kDisabled;
  if (name == "revoked") return KeyStatus::kRevoked;
  return std::nullopt;
}

std::string_view UserStatusName(UserStatus status) {
  return status == UserStatus::kActive ? "active" : "disabled";
}

std::optional<UserStatus> ParseUserStatus(std::string_view name) {
  if (name == "active") return UserStatus::kActive;
  if (name == "disabled") return UserStatus::kDisabled;
  return std::nullopt;
}

std::string GenerateApiKey() {
  std::string key(kKeyPrefix);
  key.reserve(kKeyPrefix.size() + kKeyRandomChars);
  unsigned char buf[64];
  while (key.size() < kKeyPrefix.size() + kKeyRandomChars) {
    if (RAND_bytes(buf, sizeof buf) != 1)
      throw std::runtime_error("the system's random number generator failed");
    for (unsigned char b : buf) {
      // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
      if (b >= 248) continue;
      key.push_back(kBase62[b % 62]);
      if (key.size() == kKeyPrefix.size() + kKeyRandomChars) break;
    }
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return key;
}

bool LooksLikeApiKey(std::string_view key) {
  if (key.size() != kKeyPrefix.size() + kKeyRandomChars || !key.starts_with(kKeyPrefix))
    return false;
  return std::all_of(key.begin() + kKeyPrefix.size(), key.end(), IsBase62);
}

std::string HashApiKey(std::string_view key) {
  // The edge hashes every request's key. OpenSSL 3's SHA256() looks the algorithm up on each
  // call; fetched once, with a context per thread, about half of that.
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  thread_local std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(),
                                                                           &EVP_MD_CTX_free);
  std::string out(SHA256_DIGEST_LENGTH, '\0');
  unsigned int len = 0;
  if (sha256 == nullptr || ctx == nullptr || EVP_DigestInit_ex(ctx.get(), sha256, nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), key.data(), key.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len) != 1 ||
      len != SHA256_DIGEST_LENGTH) {
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(),
           reinterpret_cast<unsigned char*>(out.data()));
  }
  return out;
}

bool SecureEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string DisplayPrefix(std::string_view key) {
  return std::string(key.substr(0, std::min(key.size(), kKeyPrefix.size() + 4))) + "...";
}

std::string MaskApiKey(std::string_view key) {
  // Shows at most 4 characters beyond a known prefix, and only of a key long enough that they
  // give nothing useful away.
  if (key.size() < 20) return "***";
  size_t head = key.starts_with(kKeyPrefix) ? kKeyPrefix.size() + 2 : 3;
  std::string out(key.substr(0, head));
  out += "***";
  out += key.substr(key.size() - 2);
  // Whatever the client sent, quote it back printable.
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return out;
}

std::optional<IpAddress> ParseIp(std::string_view text) {
  if (text.empty() || text.size() > 64) return std::nullopt;
  std::string s(text);
  if (auto zone = s.find('%'); zone != std::string::npos) s.resize(zone);  // fe80::1%eth0
  IpAddress ip;
  in_addr v4{};
  if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
    ip.v4 = true;
    ip.bytes[10] = ip.bytes[11] = 0xff;
    std::memcpy(ip.bytes.data() + 12, &v4, 4);
    return ip;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, s.c_str(), &v6) != 1) return std::nullopt;
  std::memcpy(ip.bytes.data(), &v6, 16);
  static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  ip.v4 = std::equal(std::begin(kMapped), std::end(kMapped), ip.bytes.begin());
  return ip;
}

std::optional<Cidr> ParseCidr(std::string_view text, std::string* error) {
  auto fail = [&](const std::string& why) -> std::optional<Cidr> {
    if (error) *error = "'" + std::string(text.substr(0, 64)) + "' " + why;
    return std::nullopt;
  };
  auto slash = text.find('/');
  auto ip = ParseIp(text.substr(0, slash));
  if (!ip) return fail("is not an IPv4 or IPv6 address or network");
  const int max = ip->v4 ? 32 : 128;
  int prefix = max;
  if (slash != std::string_view::npos) {
    auto bits = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), prefix);
    if (ec != std::errc() || end != bits.data() + bits.size() || bits.empty() || prefix < 0 ||
        prefix > max)
      return fail("has a bad prefix length (0.." + std::to_string(max) + ")");
  }
  Cidr cidr{*ip, prefix};
  const int total = ip->v4 ? prefix + 96 : prefix;
  for (int bit = total; bit < 128; ++bit)
    if (cidr.network.bytes[bit / 8] & (0x80 >> (bit % 8)))
      return fail("has bits set to the right of the prefix (did you mean " + [&] {
        Cidr fixed = cidr;
        for (int b = total; b < 128; ++b) fixed.network.bytes[b / 8] &= ~(0x80 >> (b % 8));
        return FormatCidr(fixed);
      }() + "?)");
  return cidr;
}

std::string FormatIp(const IpAddress& ip) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ip.v4)
    inet_ntop(AF_INET, ip.bytes.data() + 12, buf, sizeof buf);
  else
    inet_ntop(AF_INET6, ip.bytes.data(), buf, sizeof buf);
  return buf;
}

std::string FormatCidr(const Cidr& cidr) {
  return FormatIp(cidr.network) + "/" + std::to_string(cidr.prefix);
}

bool Contains(const Cidr& cidr, const IpAddress& ip) {
  if (cidr.network.v4 != ip.v4) return false;
  const int total = cidr.network.v4 ? cidr.prefix + 96 : cidr.prefix;
  int full = total / 8;
  if (!std::equal(ip.bytes.begin(), ip.bytes.begin() + full, cidr.network.bytes.begin()))
    return false;
  if (int rest = total % 8; rest != 0) {
    uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
    if ((ip.bytes[full] & mask) != cidr.network.bytes[full]) return false;
  }
  return true;
}

bool ModelAllowed(const std::vector<std::string>& patterns, std::string_view model) {
  if (patterns.empty()) return true;
  for (const auto& p : patterns)
    if (p.find('*') == std::string::npos ? p == model : Glob(p, model)) return true;
  return false;
}

bool ValidModelPattern(std::string_view pattern) {
  if (pattern.empty() || pattern.size() > kMaxPattern) return false;
  return std::none_of(pattern.begin(), pattern.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f || c == ',';
  });
}

std::vector<std::string> ParseNetworks(KeyPrincipal& principal) {
  std::vector<std::string> bad;
  principal.networks.clear();
  for (const auto& text : principal.allowed_cidrs) {
    if (auto cidr = ParseCidr(text))
      principal.networks.push_back(*cidr);
    else
      bad.push_back(text);
  }
  return bad;
}

std::string_view VerdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::kOk:
      return "ok";
    case Verdict::kUnknownKey:
      return "unknown_key";
    case Verdict::kKeyDisabled:
      return "key_disabled";
    case Verdict::kKeyRevoked:
      return "key_revoked";
    case Verdict::kKeyExpired:
      return "key_expired";
    case Verdict::kUserDisabled:
      return "user_disabled";
    case Verdict::kIpNotAllowed:
      return "ip_not_allowed";
  }
  return "unknown";
}

Verdict Evaluate(const KeyPrincipal& principal, std::string_view client_ip, int64_t now_unix_s) {
  if (principal.status == KeyStatus::kRevoked) return Verdict::kKeyRevoked;
  if (principal.status == KeyStatus::kDisabled) return Verdict::kKeyDisabled;
  if (principal.expires_at != 0 && now_unix_s >= principal.expires_at) return Verdict::kKeyExpired;
  if (principal.user_status == UserStatus::kDisabled) return Verdict::kUserDisabled;
  // Decided on allowed_cidrs, not networks: a list whose entries all failed to parse refuses
  // everyone rather than allowing anyone.
  if (!principal.allowed_cidrs.empty()) {
    auto ip = ParseIp(client_ip);
    if (!ip) return Verdict::kIpNotAllowed;
    bool inside = std::any_of(principal.networks.begin(), principal.networks.end(),
                              [&](const Cidr& c) { return Contains(c, *ip); });
    if (!inside) return Verdict::kIpNotAllowed;
  }
  return Verdict::kOk;
}

}  // namespace tollgate::auth
