// AES-256-GCM sealing of upstream secrets and master-key parsing.
#include "tollgate/router/secret_box.h"

#include <gtest/gtest.h>

#include <set>

namespace tollgate::router {
namespace {

constexpr char kHexKey[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

SecretBox::Key TestKey() { return SecretBox::ParseKey(kHexKey); }

TEST(RouterSecretBoxTest, RoundTrip) {
  SecretBox box(TestKey());
  const std::string secret = "sk-test-0123456789abcdefghijklmnopqrstuvwxyz";
  SealedSecret sealed = box.Seal(secret);
  EXPECT_EQ(sealed.nonce.size(), SecretBox::kNonceSize);
  EXPECT_EQ(sealed.ciphertext.size(), secret.size() + SecretBox::kTagSize);
  EXPECT_EQ(sealed.ciphertext.find(secret.substr(0, 8)), std::string::npos);
  auto opened = box.Open(sealed);
  ASSERT_TRUE(opened.has_value());
  EXPECT_EQ(*opened, secret);
}

TEST(RouterSecretBoxTest, EverySealUsesAFreshNonce) {
  SecretBox box(TestKey());
  std::set<std::string> nonces;
  std::set<std::string> ciphertexts;
  for (int i = 0; i < 50; ++i) {
    auto sealed = box.Seal("same secret");
    nonces.insert(sealed.nonce);
    ciphertexts.insert(sealed.ciphertext);
  }
  EXPECT_EQ(nonces.size(), 50u);
  EXPECT_EQ(ciphertexts.size(), 50u);
}

TEST(RouterSecretBoxTest, DetectsTampering) {
  SecretBox box(TestKey());
  const SealedSecret sealed = box.Seal("sk-live-secret-value");
  for (size_t i = 0; i < sealed.ciphertext.size(); ++i) {
    SealedSecret bad = sealed;
    bad.ciphertext[i] = static_cast<char>(bad.ciphertext[i] ^ 0x01);
    EXPECT_FALSE(box.Open(bad).has_value()) << "flipped ciphertext/tag byte " << i;
  }
  for (size_t i = 0; i < sealed.nonce.size(); ++i) {
    SealedSecret bad = sealed;
    bad.nonce[i] = static_cast<char>(bad.nonce[i] ^ 0x80);
    EXPECT_FALSE(box.Open(bad).has_value()) << "flipped nonce byte " << i;
  }
  SealedSecret truncated = sealed;
  truncated.ciphertext.pop_back();
  EXPECT_FALSE(box.Open(truncated).has_value());
  SealedSecret no_tag{sealed.ciphertext.substr(0, 3), sealed.nonce};
  EXPECT_FALSE(box.Open(no_tag).has_value());
  SealedSecret short_nonce{sealed.ciphertext, sealed.nonce.substr(1)};
  EXPECT_FALSE(box.Open(short_nonce).has_value());
  EXPECT_TRUE(box.Open(sealed).has_value()) << "the original must still open";
}

TEST(RouterSecretBoxTest, AnotherKeyCannotOpen) {
  SecretBox box(TestKey());
  auto other_key = TestKey();
  other_key[31] ^= 1;
  SecretBox other(other_key);
  EXPECT_FALSE(other.Open(box.Seal("sk-x-secret")).has_value());
}

TEST(RouterSecretBoxTest, ParsesHexAndBase64Keys) {
  const SecretBox::Key expected = TestKey();
  for (int i = 0; i < 32; ++i) EXPECT_EQ(expected[i], i);
  // Upper-case hex, and a trailing newline as a key file would have.
  std::string upper = kHexKey;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(SecretBox::ParseKey(upper + "\n"), expected);
  // base64 of bytes 0..31: standard padded, unpadded, URL-safe.
  EXPECT_EQ(SecretBox::ParseKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="), expected);
  EXPECT_EQ(SecretBox::ParseKey("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"), expected);
  auto ff = SecretBox::ParseKey(std::string(64, 'f'));
  EXPECT_EQ(SecretBox::ParseKey(std::string(42, '_') + "8"), ff);
  EXPECT_EQ(SecretBox::ParseKey(std::string(42, '/') + "8="), ff);
}

TEST(RouterSecretBoxTest, RejectsMalformedKeysWithoutEchoingThem) {
  const std::vector<std::string> bad = {
      "",
      "not-a-key",
      std::string(63, 'a'),                                // one hex digit short
      std::string(62, 'a') + "zz",                         // not hex, and not 32 bytes of base64
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",      // base64 of 31 bytes
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==",  // 34 bytes
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd Hh8=",     // a space
  };
  for (const auto& text : bad) {
    try {
      SecretBox::ParseKey(text);
      ADD_FAILURE() << "accepted '" << text << "'";
    } catch (const std::invalid_argument& e) {
      if (text.size() > 3) {
        EXPECT_EQ(std::string(e.what()).find(text), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace tollgate::router
