#include "url.h"

#include <gtest/gtest.h>

namespace tollgate::bench {
namespace {

TEST(ParseLocalUrl, SplitsHostPortAndTarget) {
  std::string error;
  auto u = ParseLocalUrl("http://127.0.0.1:8080/v1/chat/completions", &error);
  ASSERT_TRUE(u) << error;
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "8080");
  EXPECT_EQ(u->target, "/v1/chat/completions");
  auto bare = ParseLocalUrl("http://localhost:1", &error);
  ASSERT_TRUE(bare) << error;
  EXPECT_EQ(bare->target, "/");
}

TEST(ParseLocalUrl, RefusesAnythingButLoopbackHttpWithAPort) {
  std::string error;
  EXPECT_FALSE(ParseLocalUrl("https://127.0.0.1:8080/", &error));
  EXPECT_FALSE(ParseLocalUrl("http://example.com:80/", &error));
  EXPECT_EQ(error, "only 127.0.0.1 is benchmarked");
  EXPECT_FALSE(ParseLocalUrl("http://10.0.0.1:80/", &error));
  EXPECT_FALSE(ParseLocalUrl("http://127.0.0.1/v1", &error));
  EXPECT_EQ(error, "--url needs a port");
  EXPECT_FALSE(ParseLocalUrl("http://127.0.0.1:0/", &error));
  EXPECT_FALSE(ParseLocalUrl("http://127.0.0.1:65536/", &error));
  EXPECT_FALSE(ParseLocalUrl("http://127.0.0.1:80x/", &error));
  EXPECT_FALSE(ParseLocalUrl("http://127.0.0.1:/", &error));
}

}  // namespace
}  // namespace tollgate::bench
