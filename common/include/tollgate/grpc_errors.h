// ErrorCode <-> grpc::Status. The status carries the gRPC code from the
// ErrorCode table and, in its binary details (the grpc-status-details-bin
// trailer), a serialized google.rpc.Status holding a google.rpc.ErrorInfo
// {reason: the OpenAI code, domain: "tollgate"}: what any gRPC client reads
// with its stock error-details support.
#pragma once

#include <grpcpp/support/status.h>

#include <exception>
#include <string>
#include <string_view>

#include "tollgate/errors.h"

namespace tollgate {

inline constexpr std::string_view kErrorDomain = "tollgate";

grpc::Status ToGrpcStatus(ErrorCode code, std::string message);
grpc::Status ToGrpcStatus(const Error& error);

// The ErrorCode of a status received from one of our services: the ErrorInfo
// reason when there is one, else the nearest code for the gRPC status.
ErrorCode FromGrpcStatus(const grpc::Status& status);

// The answer to an RPC whose work threw `error`: an Error as it says; a lost
// database connection, or no connection free in time, as kServiceUnavailable
// ("the <service> service's database is unavailable; try again"); anything else
// as kInternal. Only an Error's message reaches the caller; any other exception's
// text goes to the log (redacted), tagged with `rpc`.
grpc::Status ExceptionToGrpcStatus(std::exception_ptr error, std::string_view service,
                                   std::string_view rpc);

}  // namespace tollgate
