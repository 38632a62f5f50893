#include "tollgate/errors.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace tollgate {
namespace {

TEST(ErrorsTest, OpenAiBodyHasTheFourFields) {
  auto body =
      nlohmann::json::parse(OpenAiErrorBody(ErrorCode::kModelNotFound, "no such model", "model"));
  EXPECT_EQ(body["error"]["message"], "no such model");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "model");
  EXPECT_EQ(body["error"]["code"], "model_not_found");
  auto plain = nlohmann::json::parse(OpenAiErrorBody(ErrorCode::kInvalidRequest, "bad"));
  EXPECT_TRUE(plain["error"]["param"].is_null());
  EXPECT_TRUE(plain["error"]["code"].is_null());
}

TEST(ErrorsTest, StatusesMatchOpenAi) {
  EXPECT_EQ(Describe(ErrorCode::kInvalidApiKey).http, 401);
  EXPECT_EQ(Describe(ErrorCode::kPermissionDenied).http, 403);
  EXPECT_EQ(Describe(ErrorCode::kRequestTooLarge).http, 413);
  EXPECT_EQ(Describe(ErrorCode::kRateLimited).http, 429);
  EXPECT_EQ(Describe(ErrorCode::kInsufficientQuota).code, "insufficient_quota");
  EXPECT_EQ(Describe(ErrorCode::kUpstreamError).http, 502);
  EXPECT_EQ(Describe(ErrorCode::kNoHealthyUpstream).http, 503);
  EXPECT_EQ(Describe(ErrorCode::kUpstreamTimeout).http, 504);
}

TEST(ErrorsTest, GrpcRoundTripKeepsTheExactCode) {
  for (ErrorCode c :
       {ErrorCode::kModelNotFound, ErrorCode::kInsufficientQuota, ErrorCode::kRateLimited,
        ErrorCode::kNoHealthyUpstream, ErrorCode::kPermissionDenied}) {
    EXPECT_EQ(FromGrpcStatus(ToGrpcStatus(c, "x")), c);
  }
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down")),
            ErrorCode::kServiceUnavailable);
}

}  // namespace
}  // namespace tollgate
