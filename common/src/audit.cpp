#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "tollgate/audit_grpc.h"
#include "tollgate/audit_pg.h"

namespace tollgate {
namespace {

bool NamesASecret(const std::string& field) {
  for (const char* word : {"secret", "password", "token", "api_key", "credential"})
    if (field.find(word) != std::string::npos) return true;
  return false;
}

void Redact(google::protobuf::Message& message) {
  const auto* descriptor = message.GetDescriptor();
  const auto* reflection = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const auto* field = descriptor->field(i);
    if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int j = 0; j < reflection->FieldSize(message, field); ++j)
          Redact(*reflection->MutableRepeatedMessage(&message, field, j));
      } else if (reflection->HasField(message, field)) {
        Redact(*reflection->MutableMessage(&message, field));
      }
    } else if (field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING &&
               NamesASecret(field->name())) {
      if (field->is_repeated()) {
        for (int j = 0; j < reflection->FieldSize(message, field); ++j)
          reflection->SetRepeatedString(&message, field, j, "[redacted]");
      } else if (field->has_presence() ? reflection->HasField(message, field)
                                       : !reflection->GetString(message, field).empty()) {
        reflection->SetString(&message, field, "[redacted]");
      }
    }
  }
}

}  // namespace

void WriteAudit(pqxx::transaction_base& tx, const AuditEntry& e) {
  const std::string details = e.details.empty() ? "{}" : e.details;
  if (e.at_ms > 0) {
    // Exact unix milliseconds -> TIMESTAMPTZ (no floating point on the way).
    tx.exec_params(
        "INSERT INTO audit_log (at, actor, action, target, details) VALUES "
        "(TIMESTAMPTZ 'epoch' + $1::BIGINT * INTERVAL '1 millisecond', $2, $3, $4, $5::JSONB)",
        e.at_ms, e.actor, e.action, e.target, details);
  } else {
    tx.exec_params(
        "INSERT INTO audit_log (actor, action, target, details) VALUES ($1, $2, $3, $4::JSONB)",
        e.actor, e.action, e.target, details);
  }
}

std::vector<AuditEntry> ListAudit(pqxx::transaction_base& tx, int32_t limit) {
  std::vector<AuditEntry> out;
  for (const auto& row :
       tx.exec_params("SELECT id, (EXTRACT(EPOCH FROM at) * 1000)::BIGINT, actor, action, target, "
                      "details::TEXT FROM audit_log ORDER BY id DESC LIMIT $1",
                      limit)) {
    AuditEntry e;
    e.id = row[0].as<int64_t>();
    e.at_ms = row[1].as<int64_t>();
    e.actor = row[2].as<std::string>();
    e.action = row[3].as<std::string>();
    e.target = row[4].as<std::string>();
    e.details = row[5].as<std::string>();
    out.push_back(std::move(e));
  }
  return out;
}

std::string AuditActor(const grpc::ServerContextBase& context) {
  std::string name = "admin";
  const auto& md = context.client_metadata();
  if (auto it = md.find("x-tollgate-actor"); it != md.end()) {
    std::string given;
    for (char c : std::string(it->second.data(), it->second.size()))
      if (c >= 0x20 && c < 0x7f) given += c;
    if (!given.empty()) name = given.substr(0, 64);
  }
  return name + " (" + context.peer().substr(0, 64) + ")";
}

std::string AuditDetails(const google::protobuf::Message& request,
                         const std::vector<std::pair<std::string, std::string>>& extra) {
  std::unique_ptr<google::protobuf::Message> copy(request.New());
  copy->CopyFrom(request);
  Redact(*copy);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(*copy, &json, options).ok()) json = "{}";
  if (extra.empty()) return json;
  auto object = nlohmann::json::parse(json, nullptr, false);
  if (!object.is_object()) object = nlohmann::json::object();
  for (const auto& [k, v] : extra) object[k] = v;
  return object.dump();
}

AuditEntry MakeAuditEntry(const grpc::ServerContextBase& context, std::string action,
                          std::string target, const google::protobuf::Message& request,
                          const std::vector<std::pair<std::string, std::string>>& extra) {
  AuditEntry e;
  e.actor = AuditActor(context);
  e.action = std::move(action);
  e.target = std::move(target);
  e.details = AuditDetails(request, extra);
  return e;
}

std::string AuditDetailsWith(const std::string& details, const std::string& key,
                             const std::string& value) {
  auto object = nlohmann::json::parse(details.empty() ? "{}" : details, nullptr, false);
  if (!object.is_object()) object = nlohmann::json::object();
  object[key] = value;
  return object.dump();
}

void FillAuditEntry(const AuditEntry& e, audit::v1::AuditEntry* out) {
  out->set_id(e.id);
  out->set_at_ms(e.at_ms);
  out->set_actor(e.actor);
  out->set_action(e.action);
  out->set_target(e.target);
  out->set_details(e.details);
}

}  // namespace tollgate
