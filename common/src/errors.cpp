#include "tollgate/errors.h"

#include <grpcpp/support/status_code_enum.h>

#include <nlohmann/json.hpp>

namespace tollgate {

const ErrorInfo& Describe(ErrorCode code) {
  using G = grpc::StatusCode;
  static const ErrorInfo kInvalidRequest{G::INVALID_ARGUMENT, 400, "invalid_request_error", ""};
  static const ErrorInfo kInvalidApiKey{G::UNAUTHENTICATED, 401, "invalid_request_error",
                                        "invalid_api_key"};
  static const ErrorInfo kPermissionDenied{G::PERMISSION_DENIED, 403, "invalid_request_error",
                                           "permission_denied"};
  static const ErrorInfo kNotFound{G::NOT_FOUND, 404, "invalid_request_error", "not_found"};
  static const ErrorInfo kModelNotFound{G::NOT_FOUND, 404, "invalid_request_error",
                                        "model_not_found"};
  static const ErrorInfo kAlreadyExists{G::ALREADY_EXISTS, 409, "invalid_request_error",
                                        "already_exists"};
  static const ErrorInfo kFailedPrecondition{G::FAILED_PRECONDITION, 400, "invalid_request_error",
                                             "failed_precondition"};
  static const ErrorInfo kRequestTooLarge{G::INVALID_ARGUMENT, 413, "invalid_request_error",
                                          "request_too_large"};
  static const ErrorInfo kRateLimited{G::RESOURCE_EXHAUSTED, 429, "requests",
                                      "rate_limit_exceeded"};
  static const ErrorInfo kInsufficientQuota{G::RESOURCE_EXHAUSTED, 429, "insufficient_quota",
                                            "insufficient_quota"};
  static const ErrorInfo kUpstreamError{G::UNAVAILABLE, 502, "api_error", "upstream_error"};
  static const ErrorInfo kNoHealthyUpstream{G::UNAVAILABLE, 503, "api_error",
                                            "no_healthy_upstream"};
  static const ErrorInfo kUpstreamTimeout{G::DEADLINE_EXCEEDED, 504, "api_error",
                                          "upstream_timeout"};
  static const ErrorInfo kServiceUnavailable{G::UNAVAILABLE, 503, "api_error",
                                             "service_unavailable"};
  // RESOURCE_EXHAUSTED as gRPC advises for a server out of a resource; never sent to the edge's
  // data-path clients, which read RESOURCE_EXHAUSTED as a quota refusal.
  static const ErrorInfo kOverloaded{G::RESOURCE_EXHAUSTED, 503, "api_error", "overloaded"};
  static const ErrorInfo kUnauthenticated{G::UNAUTHENTICATED, 401, "invalid_request_error",
                                          "invalid_admin_token"};
  static const ErrorInfo kInternal{G::INTERNAL, 500, "api_error", "internal_error"};
  switch (code) {
    case ErrorCode::kInvalidRequest:
      return kInvalidRequest;
    case ErrorCode::kInvalidApiKey:
      return kInvalidApiKey;
    case ErrorCode::kPermissionDenied:
      return kPermissionDenied;
    case ErrorCode::kNotFound:
      return kNotFound;
    case ErrorCode::kModelNotFound:
      return kModelNotFound;
    case ErrorCode::kAlreadyExists:
      return kAlreadyExists;
    case ErrorCode::kFailedPrecondition:
      return kFailedPrecondition;
    case ErrorCode::kRequestTooLarge:
      return kRequestTooLarge;
    case ErrorCode::kRateLimited:
      return kRateLimited;
    case ErrorCode::kInsufficientQuota:
      return kInsufficientQuota;
    case ErrorCode::kUpstreamError:
      return kUpstreamError;
    case ErrorCode::kNoHealthyUpstream:
      return kNoHealthyUpstream;
    case ErrorCode::kUpstreamTimeout:
      return kUpstreamTimeout;
    case ErrorCode::kServiceUnavailable:
      return kServiceUnavailable;
    case ErrorCode::kOverloaded:
      return kOverloaded;
    case ErrorCode::kUnauthenticated:
      return kUnauthenticated;
    case ErrorCode::kInternal:
      return kInternal;
  }
  return kInternal;
}

std::string OpenAiErrorBody(ErrorCode code, std::string_view message, std::string_view param) {
  const ErrorInfo& info = Describe(code);
  nlohmann::json error = {
      {"message", message},
      {"type", info.type},
      {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
      {"code", info.code.empty() ? nlohmann::json() : nlohmann::json(info.code)}};
  return nlohmann::json{{"error", error}}.dump(-1, ' ', false,
                                               nlohmann::json::error_handler_t::replace);
}

}  // namespace tollgate
