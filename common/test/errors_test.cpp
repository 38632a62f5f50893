#include "tollgate/errors.h"

#include <google/rpc/error_details.pb.h>
#include <google/rpc/status.pb.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/error_details.h>
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/pg.h"

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

TEST(ErrorsTest, EveryCodeRoundTripsWithItsStatusAndMessage) {
  for (int i = 0; i < kErrorCodeCount; ++i) {
    const auto c = static_cast<ErrorCode>(i);
    grpc::Status status = ToGrpcStatus(c, "what happened");
    EXPECT_EQ(static_cast<int>(status.error_code()), Describe(c).grpc);
    EXPECT_EQ(status.error_message(), "what happened");
    EXPECT_EQ(FromGrpcStatus(status), c) << Describe(c).code;
    if (c != ErrorCode::kInternal) {
      EXPECT_NE(Describe(c).code, "internal_error") << "code " << i << " has no row of its own";
    }
  }
  EXPECT_EQ(FromGrpcStatus(ToGrpcStatus(Error(ErrorCode::kAlreadyExists, "taken"))),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ(ToGrpcStatus(Error(ErrorCode::kAlreadyExists, "taken")).error_message(), "taken");
}

// The details are what the gRPC error model prescribes: a google.rpc.Status that repeats the
// code and message, with a google.rpc.ErrorInfo naming the OpenAI code.
TEST(ErrorsTest, DetailsAreAGoogleRpcStatusWithErrorInfo) {
  grpc::Status status = ToGrpcStatus(ErrorCode::kNoHealthyUpstream, "all open");
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(details.message(), "all open");
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.ErrorInfo");
  EXPECT_EQ(info.reason(), "no_healthy_upstream");
  EXPECT_EQ(info.domain(), "tollgate");

  // No OpenAI code, no ErrorInfo: the gRPC code alone says it.
  ASSERT_TRUE(
      details.ParseFromString(ToGrpcStatus(ErrorCode::kInvalidRequest, "bad").error_details()));
  EXPECT_EQ(details.details_size(), 0);
}

TEST(ErrorsTest, ForeignOrBrokenDetailsFallBackToTheGrpcCode) {
  google::rpc::ErrorInfo foreign;
  foreign.set_reason("model_not_found");
  foreign.set_domain("example.com");
  google::rpc::Status details;
  details.set_code(grpc::StatusCode::NOT_FOUND);
  details.add_details()->PackFrom(foreign);
  EXPECT_EQ(
      FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "x", details.SerializeAsString())),
      ErrorCode::kNotFound);
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x", "\xff\xff not proto")),
            ErrorCode::kServiceUnavailable);
}

class RefusingHealth final : public grpc::health::v1::Health::Service {
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse*) override {
    return ToGrpcStatus(ErrorCode::kInsufficientQuota, "You exceeded your current quota.");
  }
};

// Over a real channel, a client that knows only the standard protos (no tollgate code) reads
// the ErrorInfo with gRPC's own error-details support.
TEST(ErrorsTest, AStockClientSeesStandardDetails) {
  RefusingHealth service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_TRUE(server);
  ASSERT_GT(port, 0);

  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "You exceeded your current quota.");
  google::rpc::Status details;
  ASSERT_TRUE(grpc::ExtractErrorDetails(status, &details).ok());
  EXPECT_EQ(details.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "insufficient_quota");
  EXPECT_EQ(info.domain(), "tollgate");
  EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kInsufficientQuota);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

grpc::Status Answer(std::exception_ptr error) {
  return ExceptionToGrpcStatus(std::move(error), "billing", "Test");
}

template <typename E>
std::exception_ptr Thrown(E e) {
  return std::make_exception_ptr(std::move(e));
}

TEST(ErrorsTest, AnExpectedErrorIsAnsweredAsItSays) {
  grpc::Status status = Answer(Thrown(Error(ErrorCode::kNotFound, "user 7 not found")));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "user 7 not found");
  EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kNotFound);
}

TEST(ErrorsTest, OnlyALostDatabaseIsUnavailable) {
  for (const auto& error :
       {Thrown(pqxx::broken_connection("server closed the connection unexpectedly")),
        Thrown(PgPoolTimeout("no database connection free within 2s")),
        Thrown(pqxx::in_doubt_error("commit state unknown")),
        Thrown(pqxx::serialization_failure("could not serialize access")),
        Thrown(pqxx::sql_error("terminating connection due to administrator command", "SELECT 1",
                               "57P01"))}) {
    grpc::Status status = Answer(error);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
    EXPECT_EQ(status.error_message(), "the billing service's database is unavailable; try again");
    EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kServiceUnavailable);
  }
}

TEST(ErrorsTest, AnUnexpectedExceptionIsInternalAndSaysNothingOfItself) {
  for (const auto& error :
       {Thrown(std::runtime_error("SELECT secret FROM keys: boom")),
        Thrown(pqxx::unique_violation("duplicate key sk-SECRET", "INSERT INTO keys", "23505")),
        Thrown(std::out_of_range("vector::at")), Thrown(42), std::exception_ptr()}) {
    grpc::Status status = Answer(error);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_EQ(status.error_message(), "internal error in the billing service");
    EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kInternal);
  }
}

}  // namespace
}  // namespace tollgate
