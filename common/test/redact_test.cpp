#include "tollgate/redact.h"

#include <gtest/gtest.h>

#include <string>

namespace tollgate {
namespace {

TEST(RedactSecrets, KeysByShape) {
  EXPECT_EQ(RedactSecrets("my key is sk-tg-Ab3xQ9rT7yU2iO0pL5kJ8hG1 ok"), "my key is sk-tg-*** ok");
  EXPECT_EQ(RedactSecrets("sk-ant-api03-abcdefghijklmnopqrstuvwxyz"), "sk-ant-***");
  EXPECT_EQ(RedactSecrets("use sk-abcdefghijklmnopqrstuvwx."), "use sk-***.");
  EXPECT_EQ(RedactSecrets("AKIAIOSFODNN7EXAMPLE"), "AKIA***");
  EXPECT_EQ(RedactSecrets("ghp_0123456789abcdefghijklmnopqrstuvwxyz"), "ghp_***");
  EXPECT_EQ(RedactSecrets("xoxb-1234567890-abcdef"), "xoxb-***");
  EXPECT_EQ(RedactSecrets("AIzaSyA-0123456789abcdefghijklmnopqrstu"), "AIza***");
  EXPECT_EQ(RedactSecrets("t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end"),
            "t=eyJ*** end");
}

TEST(RedactSecrets, LeavesOrdinaryTextAlone) {
  for (std::string text :
       {"task-force sk-short tokens", "max_tokens: 50", "the password is long", "AKIA lower",
        "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        "Bearer short", "naïve café ☕"})
    EXPECT_EQ(RedactSecrets(text), text) << text;
}

TEST(RedactSecrets, BearerAndNamedValues) {
  EXPECT_EQ(RedactSecrets("Authorization: Bearer abcdefgh12345678"), "Authorization: Bearer ***");
  EXPECT_EQ(RedactSecrets("password=hunter2&user=bob"), "password=***&user=bob");
  EXPECT_EQ(RedactSecrets("DB_PASSWORD: s3cr3t"), "DB_PASSWORD: ***");
  EXPECT_EQ(RedactSecrets(R"({"api_key": "abc123", "n": 1})"), R"({"api_key": "***", "n": 1})");
  // Inside a JSON string the quotes are escaped; the value still goes.
  EXPECT_EQ(RedactSecrets(R"({"content":"config: {\"client_secret\": \"zzz999\"}"})"),
            R"({"content":"config: {\"client_secret\": \"***\"}"})");
}

TEST(RedactSecrets, JsonEscapesSeparateTokens) {
  EXPECT_EQ(RedactSecrets(R"("line\nsk-abcdefghijklmnopqrstuvwx")"), R"("line\nsk-***")");
}

TEST(RedactSecrets, PemPrivateKeyAndExactStrings) {
  std::string pem =
      "before -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE "
      "KEY----- after";
  EXPECT_EQ(RedactSecrets(pem),
            "before -----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY----- after");
  EXPECT_EQ(RedactSecrets("-----BEGIN CERTIFICATE-----x-----END CERTIFICATE-----"),
            "-----BEGIN CERTIFICATE-----x-----END CERTIFICATE-----");
  EXPECT_EQ(RedactSecrets("upstream said mock-key-a-secret twice: mock-key-a-secret",
                          {"mock-key-a-secret", "short"}),
            "upstream said *** twice: ***");
}

TEST(RedactSecrets, LongInputIsLinear) {
  std::string big(2'000'000, 'a');
  big += " sk-abcdefghijklmnopqrstuvwx";
  std::string out = RedactSecrets(big);
  EXPECT_TRUE(out.ends_with(" sk-***"));
}

TEST(SanitizeText, ValidUtf8NoNulBounded) {
  bool cut = true;
  EXPECT_EQ(SanitizeText("héllo", 100, &cut), "héllo");
  EXPECT_FALSE(cut);
  EXPECT_EQ(SanitizeText(std::string("a\0b", 3), 100),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(SanitizeText("a\xFF\xC0\x80z", 100), "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDz");
  EXPECT_EQ(SanitizeText("\xED\xA0\x80", 100),
            "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  // Never cut inside a character: "é" is two bytes.
  EXPECT_EQ(SanitizeText("aé", 2, &cut), "a");
  EXPECT_TRUE(cut);
  EXPECT_EQ(SanitizeText("abc", 3, &cut), "abc");
  EXPECT_FALSE(cut);
}

}  // namespace
}  // namespace tollgate
