// The one table that maps every failure a client can see to its gRPC status,
// its HTTP status and its OpenAI error type/code.
#pragma once

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

namespace tollgate {

enum class ErrorCode {
  kInvalidRequest,      // malformed JSON, missing field
  kInvalidApiKey,       // unknown or malformed key
  kPermissionDenied,    // disabled user, expired key, IP or model not allowed
  kNotFound,            // unknown route or object
  kModelNotFound,       // unknown model
  kRequestTooLarge,     // body over the limit
  kRateLimited,         // RPM/TPM window full
  kInsufficientQuota,   // monthly quota or balance exhausted
  kUpstreamError,       // bad answer from the provider
  kNoHealthyUpstream,   // every candidate's breaker open
  kUpstreamTimeout,     // provider too slow
  kServiceUnavailable,  // one of our own services is down
  kUnauthenticated,     // admin RPC without a valid admin token
  kInternal,
};

struct ErrorInfo {
  grpc::StatusCode grpc;
  int http;
  std::string_view type;  // OpenAI "type"
  std::string_view code;  // OpenAI "code"; empty means null
};

const ErrorInfo& Describe(ErrorCode code);

// `{"error":{"message":...,"type":...,"param":...,"code":...}}`
std::string OpenAiErrorBody(ErrorCode code, std::string_view message, std::string_view param = {});

grpc::Status ToGrpcStatus(ErrorCode code, std::string message);
// Best-effort reverse mapping for a status received from one of our services.
ErrorCode FromGrpcStatus(const grpc::Status& status);

}  // namespace tollgate
