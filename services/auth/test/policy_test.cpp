// The pure policy shared by the auth service and the edge: keys, networks, models, verdicts.
#include "tollgate/auth/policy.h"

#include <gtest/gtest.h>

#include <set>

namespace tollgate::auth {
namespace {

TEST(ApiKeyTest, GeneratedKeysAreLongRandomBase62WithThePrefix) {
  std::set<std::string> seen;
  std::map<char, int> counts;
  for (int i = 0; i < 2000; ++i) {
    std::string key = GenerateApiKey();
    ASSERT_EQ(key.size(), 6u + 43u);
    ASSERT_TRUE(key.starts_with("sk-tg-")) << key;
    ASSERT_TRUE(LooksLikeApiKey(key)) << key;
    for (char c : key.substr(6)) ++counts[c];
    seen.insert(key);
  }
  EXPECT_EQ(seen.size(), 2000u);
  // 86,000 characters over 62 symbols: every symbol shows up, none dominates.
  EXPECT_EQ(counts.size(), 62u);
  for (auto [c, n] : counts) {
    EXPECT_GT(n, 86000 / 62 / 2) << c;
    EXPECT_LT(n, 86000 / 62 * 2) << c;
  }
}

TEST(ApiKeyTest, ShapeHashPrefixAndMask) {
  const std::string key = "sk-tg-" + std::string(41, 'a') + "yz";
  EXPECT_TRUE(LooksLikeApiKey(key));
  EXPECT_FALSE(LooksLikeApiKey(key.substr(1)));
  EXPECT_FALSE(LooksLikeApiKey(key + "a"));
  EXPECT_FALSE(LooksLikeApiKey("sk-xx-" + key.substr(6)));
  EXPECT_FALSE(LooksLikeApiKey("sk-tg-" + std::string(42, 'a') + "-"));
  EXPECT_FALSE(LooksLikeApiKey(""));

  std::string hash = HashApiKey(key);
  EXPECT_EQ(hash.size(), 32u);
  EXPECT_EQ(hash, HashApiKey(key));
  EXPECT_NE(hash, HashApiKey(key.substr(0, key.size() - 1) + "Z"));
  // SHA-256("abc"), the FIPS 180-2 test vector.
  std::string abc = HashApiKey("abc");
  EXPECT_EQ(static_cast<unsigned char>(abc[0]), 0xba);
  EXPECT_EQ(static_cast<unsigned char>(abc[31]), 0xad);
  EXPECT_TRUE(SecureEquals(hash, HashApiKey(key)));
  EXPECT_FALSE(SecureEquals(hash, abc));
  EXPECT_FALSE(SecureEquals(hash, hash.substr(1)));

  EXPECT_EQ(DisplayPrefix(key), "sk-tg-aaaa...");
  EXPECT_EQ(MaskApiKey(key), "sk-tg-aa***yz");
  EXPECT_EQ(MaskApiKey("sk-proj-0123456789abcdefXY"), "sk-***XY");
  EXPECT_EQ(MaskApiKey("short"), "***");
  EXPECT_EQ(MaskApiKey(std::string("sk-tg-a\n") + std::string(30, 'b')), "sk-tg-a?***bb");
}

TEST(CidrTest, ParsesIpv4AndIpv6NetworksAndSingleAddresses) {
  auto v4 = ParseCidr("10.0.0.0/8");
  ASSERT_TRUE(v4);
  EXPECT_EQ(FormatCidr(*v4), "10.0.0.0/8");
  EXPECT_TRUE(Contains(*v4, *ParseIp("10.255.1.2")));
  EXPECT_FALSE(Contains(*v4, *ParseIp("11.0.0.1")));

  auto host = ParseCidr("192.168.1.7");
  ASSERT_TRUE(host);
  EXPECT_EQ(FormatCidr(*host), "192.168.1.7/32");
  EXPECT_TRUE(Contains(*host, *ParseIp("192.168.1.7")));
  EXPECT_FALSE(Contains(*host, *ParseIp("192.168.1.8")));

  auto odd = ParseCidr("172.16.0.0/12");
  ASSERT_TRUE(odd);
  EXPECT_TRUE(Contains(*odd, *ParseIp("172.31.255.255")));
  EXPECT_FALSE(Contains(*odd, *ParseIp("172.32.0.0")));

  auto v6 = ParseCidr("2001:DB8::/32");
  ASSERT_TRUE(v6);
  EXPECT_EQ(FormatCidr(*v6), "2001:db8::/32");
  EXPECT_TRUE(Contains(*v6, *ParseIp("2001:db8:ffff::1")));
  EXPECT_FALSE(Contains(*v6, *ParseIp("2001:db9::1")));
  EXPECT_FALSE(Contains(*v6, *ParseIp("10.0.0.1"))) << "families never match each other";
  EXPECT_FALSE(Contains(*v4, *ParseIp("::a00:1")));

  auto v6odd = ParseCidr("fd00:ab:cd80::/41");
  ASSERT_TRUE(v6odd);
  EXPECT_TRUE(Contains(*v6odd, *ParseIp("fd00:ab:cdff:ffff::1")));
  EXPECT_FALSE(Contains(*v6odd, *ParseIp("fd00:ab:cd00::1")));

  auto loop6 = ParseCidr("::1");
  ASSERT_TRUE(loop6);
  EXPECT_EQ(FormatCidr(*loop6), "::1/128");
  EXPECT_TRUE(Contains(*ParseCidr("0.0.0.0/0"), *ParseIp("203.0.113.9")));
  EXPECT_TRUE(Contains(*ParseCidr("::/0"), *ParseIp("2001:db8::1")));

  // A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6 addresses.
  EXPECT_TRUE(Contains(*v4, *ParseIp("::ffff:10.1.2.3")));
  EXPECT_TRUE(Contains(*ParseCidr("fe80::/10"), *ParseIp("fe80::1%eth0")));
}

TEST(CidrTest, FormatIpGivesOneSpellingPerAddress) {
  EXPECT_EQ(FormatIp(*ParseIp("203.0.113.9")), "203.0.113.9");
  EXPECT_EQ(FormatIp(*ParseIp("::ffff:203.0.113.9")), "203.0.113.9");
  EXPECT_EQ(FormatIp(*ParseIp("2001:DB8:0:0::1")), "2001:db8::1");
  EXPECT_EQ(FormatIp(*ParseIp("2001:db8::1")), FormatIp(*ParseIp("2001:0db8::0001")));
}

TEST(CidrTest, RefusesMalformedNetworksSayingWhy) {
  std::string error;
  EXPECT_FALSE(ParseCidr("10.0.0.1/8", &error));
  EXPECT_NE(error.find("did you mean 10.0.0.0/8"), std::string::npos) << error;
  EXPECT_FALSE(ParseCidr("10.0.0.0/33", &error));
  EXPECT_NE(error.find("prefix"), std::string::npos) << error;
  EXPECT_FALSE(ParseCidr("2001:db8::/129", &error));
  EXPECT_FALSE(ParseCidr("10.0.0.0/", &error));
  EXPECT_FALSE(ParseCidr("10.0.0.0/8x", &error));
  EXPECT_FALSE(ParseCidr("300.0.0.0/8", &error));
  EXPECT_FALSE(ParseCidr("example.com", &error));
  EXPECT_FALSE(ParseCidr("", &error));
  EXPECT_FALSE(ParseIp("1.2.3"));
  EXPECT_FALSE(ParseIp("::g"));
}

TEST(ModelTest, ExactNamesAndWildcards) {
  EXPECT_TRUE(ModelAllowed({}, "anything")) << "no allowlist: every model";
  std::vector<std::string> list = {"gpt-4o*", "text-embedding-3-small", "*-mini", "o1-*-preview"};
  EXPECT_TRUE(ModelAllowed(list, "gpt-4o"));
  EXPECT_TRUE(ModelAllowed(list, "gpt-4o-mini"));
  EXPECT_TRUE(ModelAllowed(list, "gpt-4o-2024-08-06"));
  EXPECT_TRUE(ModelAllowed(list, "text-embedding-3-small"));
  EXPECT_FALSE(ModelAllowed(list, "text-embedding-3-large"));
  EXPECT_TRUE(ModelAllowed(list, "o3-mini"));
  EXPECT_TRUE(ModelAllowed(list, "o1-mega-preview"));
  EXPECT_FALSE(ModelAllowed(list, "o1-preview")) << "the * needs its own dashes around it";
  EXPECT_FALSE(ModelAllowed(list, "gpt-4"));
  EXPECT_FALSE(ModelAllowed(list, "my-gpt-4o")) << "a pattern is anchored at both ends";
  EXPECT_FALSE(ModelAllowed({"gpt-4o"}, "gpt-4o-mini")) << "no * means exactly that name";
  EXPECT_TRUE(ModelAllowed({"*"}, "whatever"));
  EXPECT_TRUE(ModelAllowed({"a**b"}, "ab"));
  EXPECT_TRUE(ModelAllowed({"*a*a*a*"}, "xaxaxa"));
  EXPECT_FALSE(ModelAllowed({"*a*a*a*"}, "xaxax"));

  EXPECT_TRUE(ValidModelPattern("gpt-4o*"));
  EXPECT_TRUE(ValidModelPattern("meta-llama/Llama-3-8B"));
  EXPECT_FALSE(ValidModelPattern(""));
  EXPECT_FALSE(ValidModelPattern("gpt 4o"));
  EXPECT_FALSE(ValidModelPattern("a,b"));
  EXPECT_FALSE(ValidModelPattern(std::string(257, 'a')));
}

KeyPrincipal Active() {
  KeyPrincipal p;
  p.key_id = 1;
  p.user_id = 2;
  return p;
}

TEST(VerdictTest, StatusExpiryUserAndAddressInThatOrder) {
  const int64_t now = 1'700'000'000;
  KeyPrincipal p = Active();
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now), Verdict::kOk);

  p.expires_at = now + 1;
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now), Verdict::kOk);
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now + 1), Verdict::kKeyExpired) << "expires at that second";

  p.user_status = UserStatus::kDisabled;
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now + 5), Verdict::kKeyExpired);
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now), Verdict::kUserDisabled);

  p.status = KeyStatus::kDisabled;
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now), Verdict::kKeyDisabled);
  p.status = KeyStatus::kRevoked;
  EXPECT_EQ(Evaluate(p, "1.2.3.4", now), Verdict::kKeyRevoked);
}

TEST(VerdictTest, IpAllowlistV4AndV6) {
  KeyPrincipal p = Active();
  p.allowed_cidrs = {"10.0.0.0/8", "2001:db8::/32"};
  EXPECT_TRUE(ParseNetworks(p).empty());
  EXPECT_EQ(Evaluate(p, "10.9.8.7", 0), Verdict::kOk);
  EXPECT_EQ(Evaluate(p, "::ffff:10.9.8.7", 0), Verdict::kOk);
  EXPECT_EQ(Evaluate(p, "2001:db8::42", 0), Verdict::kOk);
  EXPECT_EQ(Evaluate(p, "192.168.0.1", 0), Verdict::kIpNotAllowed);
  EXPECT_EQ(Evaluate(p, "2001:db9::42", 0), Verdict::kIpNotAllowed);
  EXPECT_EQ(Evaluate(p, "", 0), Verdict::kIpNotAllowed) << "no address: not allowed";
  EXPECT_EQ(Evaluate(p, "garbage", 0), Verdict::kIpNotAllowed);

  // A list whose entries do not parse refuses everyone instead of allowing anyone.
  KeyPrincipal broken = Active();
  broken.allowed_cidrs = {"not-a-network"};
  EXPECT_EQ(ParseNetworks(broken), std::vector<std::string>{"not-a-network"});
  EXPECT_EQ(Evaluate(broken, "10.0.0.1", 0), Verdict::kIpNotAllowed);
  KeyPrincipal unparsed = Active();
  unparsed.allowed_cidrs = {"10.0.0.0/8"};  // ParseNetworks never called
  EXPECT_EQ(Evaluate(unparsed, "10.0.0.1", 0), Verdict::kIpNotAllowed);
}

}  // namespace
}  // namespace tollgate::auth
