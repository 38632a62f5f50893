// The gRPC side of the audit log (see audit.h): who is calling, what they asked
// for, and the AuditEntry message every ListAuditLog answers with.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <string>
#include <utility>
#include <vector>

#include "tollgate/audit.h"
#include "tollgate/audit/v1/audit.pb.h"

namespace tollgate {

// Who made an admin change: the optional "x-tollgate-actor" metadata (printable
// ASCII, at most 64 characters; "admin" without it) and the caller's address.
// Never the token.
std::string AuditActor(const grpc::ServerContextBase& context);

// The request's fields as a JSON object (proto field names). Secrets never
// appear: any string field whose name says it holds one (secret, password,
// token, api_key, credential) is replaced by "[redacted]" when set, at any
// depth. `extra` adds string fields (e.g. a key's display prefix).
std::string AuditDetails(const google::protobuf::Message& request,
                         const std::vector<std::pair<std::string, std::string>>& extra = {});

// An entry for one admin call: its actor, `action`, `target` (empty for a
// creation: the repository names the new object) and the request as details.
AuditEntry MakeAuditEntry(const grpc::ServerContextBase& context, std::string action,
                          std::string target, const google::protobuf::Message& request,
                          const std::vector<std::pair<std::string, std::string>>& extra = {});

void FillAuditEntry(const AuditEntry& entry, audit::v1::AuditEntry* out);

}  // namespace tollgate
