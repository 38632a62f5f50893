// The one table that maps every failure to its gRPC status, its HTTP status
// and its OpenAI error type/code, and the one exception that carries it.
// Light on purpose (no gRPC, no database): logic headers include it to throw
// Error; grpc_errors.h turns an ErrorCode into a gRPC status and back.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace tollgate {

enum class ErrorCode {
  kInvalidRequest,      // malformed JSON, missing field, bad admin input
  kInvalidApiKey,       // unknown or malformed key
  kPermissionDenied,    // disabled user, expired key, IP or model not allowed
  kNotFound,            // unknown route or object
  kModelNotFound,       // unknown model
  kAlreadyExists,       // admin: an object with this name or key exists
  kFailedPrecondition,  // admin: the object's state forbids the change (a revoked key)
  kRequestTooLarge,     // body over the limit
  kRateLimited,         // RPM/TPM window full
  kInsufficientQuota,   // monthly quota or balance exhausted
  kUpstreamError,       // bad answer from the provider
  kNoHealthyUpstream,   // every candidate's breaker open
  kUpstreamTimeout,     // provider too slow
  kServiceUnavailable,  // one of our own services (or its database) is down
  kOverloaded,          // a consumer fell too far behind (a key watcher); it reconnects
  kUnauthenticated,     // admin RPC without a valid admin token
  kInternal,            // a bug: an exception nobody expected; stays last
};
inline constexpr int kErrorCodeCount = static_cast<int>(ErrorCode::kInternal) + 1;

struct ErrorInfo {
  int grpc;  // a grpc::StatusCode (= google.rpc.Code)
  int http;
  std::string_view type;  // OpenAI "type"
  std::string_view code;  // OpenAI "code"; empty means null. Also the google.rpc.ErrorInfo reason.
};

const ErrorInfo& Describe(ErrorCode code);

// `{"error":{"message":...,"type":...,"param":...,"code":...}}`
std::string OpenAiErrorBody(ErrorCode code, std::string_view message, std::string_view param = {});

// An expected failure raised by service logic (bad input, an unknown or duplicate
// object): the RPC answers `code` with what() as the message, shown to the caller
// as is, so it never holds SQL or a secret.
class Error final : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace tollgate
