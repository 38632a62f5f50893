#include "tollgate/grpc_errors.h"

#include <google/rpc/error_details.pb.h>
#include <google/rpc/status.pb.h>
#include <grpcpp/support/error_details.h>

#include <optional>
#include <pqxx/pqxx>

#include "tollgate/log.h"
#include "tollgate/pg.h"

namespace tollgate {
namespace {

std::optional<ErrorCode> FromReason(const grpc::Status& status) {
  if (status.error_details().empty()) return std::nullopt;
  google::rpc::Status details;
  if (!grpc::ExtractErrorDetails(status, &details).ok()) return std::nullopt;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (!any.UnpackTo(&info) || info.domain() != kErrorDomain || info.reason().empty()) continue;
    for (int i = 0; i < kErrorCodeCount; ++i)
      if (Describe(static_cast<ErrorCode>(i)).code == info.reason())
        return static_cast<ErrorCode>(i);
  }
  return std::nullopt;
}

// Failures of the database itself (gone, restarting, out of connections or resources, asking
// for a retry) rather than of the statement: the caller may retry, so UNAVAILABLE.
bool DatabaseUnavailable(const std::exception& e) {
  if (dynamic_cast<const PgPoolTimeout*>(&e) || dynamic_cast<const pqxx::broken_connection*>(&e) ||
      dynamic_cast<const pqxx::in_doubt_error*>(&e) ||
      dynamic_cast<const pqxx::transaction_rollback*>(&e) ||
      dynamic_cast<const pqxx::insufficient_resources*>(&e))
    return true;
  // Class 08 (connection exception) and 57P (the server shutting down or starting up).
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    return state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0;
  }
  return false;
}

}  // namespace

grpc::Status ToGrpcStatus(ErrorCode code, std::string message) {
  const ErrorInfo& info = Describe(code);
  google::rpc::Status details;
  details.set_code(info.grpc);
  details.set_message(message);
  if (!info.code.empty()) {
    google::rpc::ErrorInfo reason;
    reason.set_reason(std::string(info.code));
    reason.set_domain(std::string(kErrorDomain));
    details.add_details()->PackFrom(reason);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(info.grpc), std::move(message),
                      details.SerializeAsString());
}

grpc::Status ToGrpcStatus(const Error& error) { return ToGrpcStatus(error.code(), error.what()); }

ErrorCode FromGrpcStatus(const grpc::Status& status) {
  if (auto code = FromReason(status)) return *code;
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      return ErrorCode::kInvalidRequest;
    case grpc::StatusCode::UNAUTHENTICATED:
      return ErrorCode::kInvalidApiKey;
    case grpc::StatusCode::PERMISSION_DENIED:
      return ErrorCode::kPermissionDenied;
    case grpc::StatusCode::NOT_FOUND:
      return ErrorCode::kNotFound;
    case grpc::StatusCode::ALREADY_EXISTS:
      return ErrorCode::kAlreadyExists;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return ErrorCode::kFailedPrecondition;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return ErrorCode::kRateLimited;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return ErrorCode::kServiceUnavailable;
    default:
      return ErrorCode::kInternal;
  }
}

grpc::Status ExceptionToGrpcStatus(std::exception_ptr error, std::string_view service,
                                   std::string_view rpc) {
  const std::string name(service);
  if (!error)
    return ToGrpcStatus(ErrorCode::kInternal, "internal error in the " + name + " service");
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return ToGrpcStatus(e);
  } catch (const std::exception& e) {
    log::Error(name, "call failed", {{"rpc", std::string(rpc)}, {"error", log::Redact(e.what())}});
    if (DatabaseUnavailable(e))
      return ToGrpcStatus(ErrorCode::kServiceUnavailable,
                          "the " + name + " service's database is unavailable; try again");
  } catch (...) {
    log::Error(name, "call failed", {{"rpc", std::string(rpc)}, {"error", "not a std::exception"}});
  }
  return ToGrpcStatus(ErrorCode::kInternal, "internal error in the " + name + " service");
}

}  // namespace tollgate
