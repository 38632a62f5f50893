#include "tollgate/encoding.h"

#include <gtest/gtest.h>

#include <string>

namespace tollgate {
namespace {

TEST(EncodingTest, HexRoundTripsAnyBytes) {
  const std::string bytes("\x00\x01\x7f\x80\xfe\xff", 6);
  EXPECT_EQ(HexEncode(bytes), "00017f80feff");
  EXPECT_EQ(HexEncode(""), "");
  EXPECT_EQ(HexDecode("00017f80feff"), bytes);
  EXPECT_EQ(HexDecode("00017F80FEFF"), bytes) << "either case";
  EXPECT_EQ(HexDecode(""), std::string());
}

TEST(EncodingTest, HexRejectsMalformedInput) {
  EXPECT_EQ(HexDecode("abc"), std::nullopt) << "odd length";
  EXPECT_EQ(HexDecode("zz"), std::nullopt);
  EXPECT_EQ(HexDecode("ab:cd"), std::nullopt) << "no separators";
  EXPECT_EQ(HexDecode(std::string("ab\0d", 4)), std::nullopt);
  EXPECT_EQ(HexDecode(" abc"), std::nullopt);
}

TEST(EncodingTest, Base64MatchesRfc4648) {
  // RFC 4648 §10.
  const char* kVectors[][2] = {{"", ""},
                               {"f", "Zg=="},
                               {"fo", "Zm8="},
                               {"foo", "Zm9v"},
                               {"foob", "Zm9vYg=="},
                               {"fooba", "Zm9vYmE="},
                               {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : kVectors) {
    EXPECT_EQ(Base64Encode(plain), encoded);
    EXPECT_EQ(Base64Decode(encoded), plain) << encoded;
    std::string unpadded(encoded);
    while (!unpadded.empty() && unpadded.back() == '=') unpadded.pop_back();
    EXPECT_EQ(Base64Decode(unpadded), plain) << unpadded;
  }
}

TEST(EncodingTest, Base64AcceptsBothAlphabetsAndBinary) {
  const std::string bytes("\xfb\xff\xbf\x00\x10", 5);
  EXPECT_EQ(Base64Encode(bytes), "+/+/ABA=");
  EXPECT_EQ(Base64Decode("+/+/ABA="), bytes);
  EXPECT_EQ(Base64Decode("-_-_ABA"), bytes) << "URL-safe, unpadded";
  EXPECT_EQ(Base64Decode("-/+_ABA="), bytes) << "mixed";
}

TEST(EncodingTest, Base64RejectsMalformedInput) {
  EXPECT_EQ(Base64Decode("Zm9v YmFy"), std::nullopt) << "no whitespace";
  EXPECT_EQ(Base64Decode("Zm9vYmFy\n"), std::nullopt);
  EXPECT_EQ(Base64Decode("Zm9vY"), std::nullopt) << "a lone trailing character";
  EXPECT_EQ(Base64Decode("Zm=9v"), std::nullopt) << "padding inside";
  EXPECT_EQ(Base64Decode("Zm9v!"), std::nullopt);
}

}  // namespace
}  // namespace tollgate
