// The client's address behind trusted proxies: the header walk of client_ip.h.
#include "src/client_ip.h"

#include <gtest/gtest.h>

#include "tollgate/config.h"

namespace tollgate::edge {
namespace {

const TrustedProxies& Trusted() {
  static const TrustedProxies trusted =
      TrustedProxies::Parse({"10.0.0.0/8", "fd00::/8", "192.0.2.1"});
  return trusted;
}

std::string Xff(const std::string& peer, const std::string& value) {
  return ClientIp(peer, {{"x-forwarded-for", value}}, Trusted());
}

std::string Fwd(const std::string& peer, const std::string& value) {
  return ClientIp(peer, {{"forwarded", value}}, Trusted());
}

TEST(ClientIpTest, WithoutTrustedProxiesThePeerIsTheClient) {
  EXPECT_EQ(ClientIp("10.0.0.1", {{"x-forwarded-for", "203.0.113.7"}}, TrustedProxies{}),
            "10.0.0.1");
}

TEST(ClientIpTest, HeadersFromAnUntrustedPeerAreIgnored) {
  EXPECT_EQ(Xff("203.0.113.50", "198.51.100.1"), "203.0.113.50");
  EXPECT_EQ(Fwd("203.0.113.50", "for=198.51.100.1"), "203.0.113.50");
  // An address next to a trusted network is not trusted.
  EXPECT_EQ(Xff("11.0.0.1", "198.51.100.1"), "11.0.0.1");
  EXPECT_EQ(Xff("192.0.2.2", "198.51.100.1"), "192.0.2.2");
  EXPECT_EQ(Xff("192.0.2.1", "198.51.100.1"), "198.51.100.1");
}

TEST(ClientIpTest, TrustedChainIsWalkedRightToLeftPastTrustedHops) {
  // The client wrote 198.51.100.9 itself; the first proxy appended the real client, the second
  // proxy appended the first.
  EXPECT_EQ(Xff("10.0.0.1", "198.51.100.9, 203.0.113.7, 10.0.0.2"), "203.0.113.7");
  EXPECT_EQ(Xff("10.0.0.1", "203.0.113.7"), "203.0.113.7");
  // Every entry trusted: the leftmost one is the client.
  EXPECT_EQ(Xff("10.0.0.1", "10.0.0.3, 10.0.0.2"), "10.0.0.3");
  // No header, or an empty one: the peer.
  EXPECT_EQ(ClientIp("10.0.0.1", {}, Trusted()), "10.0.0.1");
  EXPECT_EQ(Xff("10.0.0.1", " "), "10.0.0.1");
  // Empty list elements are skipped, as the list rule allows.
  EXPECT_EQ(Xff("10.0.0.1", "203.0.113.7,, 10.0.0.2,"), "203.0.113.7");
}

TEST(ClientIpTest, SeveralHeaderLinesAreOneListInOrder) {
  HttpHeaders headers = {{"x-forwarded-for", "198.51.100.9"},
                         {"content-type", "application/json"},
                         {"x-forwarded-for", "203.0.113.7, 10.0.0.2"}};
  EXPECT_EQ(ClientIp("10.0.0.1", headers, Trusted()), "203.0.113.7");
  headers = {{"x-forwarded-for", "198.51.100.9, 10.0.0.5"}, {"x-forwarded-for", "10.0.0.2"}};
  EXPECT_EQ(ClientIp("10.0.0.1", headers, Trusted()), "198.51.100.9");
}

TEST(ClientIpTest, PortsAndIpv6) {
  EXPECT_EQ(Xff("10.0.0.1", "203.0.113.7:4711"), "203.0.113.7");
  EXPECT_EQ(Xff("10.0.0.1", "[2001:db8::1]:4711"), "2001:db8::1");
  EXPECT_EQ(Xff("10.0.0.1", "[2001:db8::1]"), "2001:db8::1");
  // One address, one spelling: per-IP limits cannot be dodged by rewriting it.
  EXPECT_EQ(Xff("10.0.0.1", "2001:DB8:0:0::1"), "2001:db8::1");
  EXPECT_EQ(Xff("10.0.0.1", "::ffff:203.0.113.7"), "203.0.113.7");
  // An IPv6 peer and IPv6 hops.
  EXPECT_EQ(Xff("fd00::1", "2001:db8::7, fd12::3"), "2001:db8::7");
  // A dual-stack listener reports an IPv4 peer IPv4-mapped; it is trusted all the same.
  EXPECT_EQ(Xff("::ffff:10.0.0.1", "203.0.113.7"), "203.0.113.7");
}

TEST(ClientIpTest, ForwardedWithQuotesPortsAndParameters) {
  EXPECT_EQ(Fwd("10.0.0.1", "for=203.0.113.7"), "203.0.113.7");
  EXPECT_EQ(Fwd("10.0.0.1", "For=\"203.0.113.7:8080\";proto=https;by=10.0.0.1"), "203.0.113.7");
  EXPECT_EQ(Fwd("10.0.0.1", "for=\"[2001:db8:cafe::17]:4711\""), "2001:db8:cafe::17");
  EXPECT_EQ(Fwd("10.0.0.1", "proto=http; for=\"[2001:db8:cafe::17]\""), "2001:db8:cafe::17");
  EXPECT_EQ(Fwd("10.0.0.1", "for=198.51.100.9, for=203.0.113.7;host=\"a,b\", for=10.0.0.2"),
            "203.0.113.7");
  // An obfuscated port is still a port.
  EXPECT_EQ(Fwd("10.0.0.1", "for=\"203.0.113.7:_p1\""), "203.0.113.7");
  // Forwarded wins over X-Forwarded-For when both are present.
  HttpHeaders both = {{"x-forwarded-for", "198.51.100.1"}, {"forwarded", "for=203.0.113.7"}};
  EXPECT_EQ(ClientIp("10.0.0.1", both, Trusted()), "203.0.113.7");
  // Several Forwarded lines are one list.
  HttpHeaders lines = {{"forwarded", "for=203.0.113.7"}, {"forwarded", "for=10.0.0.9"}};
  EXPECT_EQ(ClientIp("10.0.0.1", lines, Trusted()), "203.0.113.7");
}

TEST(ClientIpTest, MalformedEntryStopsTheWalkAtTheLastGoodAddress) {
  // Garbage the nearest proxy handed over: the peer is all we know.
  EXPECT_EQ(Xff("10.0.0.1", "203.0.113.7, garbage"), "10.0.0.1");
  // Garbage further left (the client's own writing) is never reached.
  EXPECT_EQ(Xff("10.0.0.1", "garbage, 203.0.113.7"), "203.0.113.7");
  // Garbage behind a trusted hop: that hop is the last good address.
  EXPECT_EQ(Xff("10.0.0.1", "203.0.113.7, garbage, 10.0.0.2"), "10.0.0.2");
  for (const char* bad :
       {"unknown", "203.0.113.7:", "203.0.113.7:123456", "[203.0.113.7]", "[2001:db8::1",
        "[2001:db8::1]x", "fe80::1%eth0", "203.0.113.256", "1.2.3", "\"203.0.113.7\"", ""}) {
    EXPECT_EQ(Xff("10.0.0.1", std::string(bad) + ", 10.0.0.2"), "10.0.0.2") << bad;
  }
  EXPECT_EQ(Fwd("10.0.0.1", "for=unknown"), "10.0.0.1");
  EXPECT_EQ(Fwd("10.0.0.1", "for=_hidden"), "10.0.0.1");
  EXPECT_EQ(Fwd("10.0.0.1", "proto=https"), "10.0.0.1");              // no for=
  EXPECT_EQ(Fwd("10.0.0.1", "for=1.2.3.4;for=5.6.7.8"), "10.0.0.1");  // for= twice
  EXPECT_EQ(Fwd("10.0.0.1", "for"), "10.0.0.1");
  EXPECT_EQ(Fwd("10.0.0.1", "for=\"[2001:db8::1]"), "10.0.0.1");  // unclosed quote
  // A quote opened by the client swallows what a proxy appended on the same line: malformed.
  EXPECT_EQ(Fwd("10.0.0.1", "for=\"198.51.100.1, for=203.0.113.7"), "10.0.0.1");
  EXPECT_EQ(Fwd("10.0.0.1", "for=\"1.2.3.4\\"), "10.0.0.1");
  // ... but on a line of its own it cannot.
  HttpHeaders lines = {{"forwarded", "for=\"198.51.100.1"}, {"forwarded", "for=203.0.113.7"}};
  EXPECT_EQ(ClientIp("10.0.0.1", lines, Trusted()), "203.0.113.7");
}

TEST(ClientIpTest, NodeAddressForms) {
  EXPECT_TRUE(ParseNodeAddress(" 203.0.113.7 "));
  EXPECT_TRUE(ParseNodeAddress("203.0.113.7:80"));
  EXPECT_TRUE(ParseNodeAddress("2001:db8::1"));
  EXPECT_TRUE(ParseNodeAddress("[2001:db8::1]:80"));
  EXPECT_FALSE(ParseNodeAddress("2001:db8::1:80:"));
  EXPECT_FALSE(ParseNodeAddress("example.com"));
  EXPECT_FALSE(ParseNodeAddress("example.com:80"));
  EXPECT_FALSE(ParseNodeAddress(std::string(10000, '1')));
}

TEST(ClientIpTest, BadTrustedProxiesFailNamingTheKey) {
  EXPECT_TRUE(TrustedProxies::Parse({}).empty());
  EXPECT_FALSE(TrustedProxies::Parse({"10.0.0.0/8", "::1"}).empty());
  for (const char* bad : {"10.0.0.1/8", "10.0.0.0/33", "ten", "2001:db8::/129", ""}) {
    try {
      TrustedProxies::Parse({"10.0.0.0/8", bad});
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("edge.trusted_proxies"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace tollgate::edge
