// tollgatectl: the operator's CLI, a gRPC client of every service's admin API.
//
//   tollgatectl [global flags] SERVICE COMMAND [--field=value ...]
//   tollgatectl router create-provider --name=openai --type=openai
//   --base-url=https://api.openai.com/v1 tollgatectl router create-upstream-key --provider-id=1
//   --name=k1 --secret-env=OPENAI_API_KEY tollgatectl router list-upstream-keys tollgatectl router
//   help                      lists the service's commands and their fields
//
// COMMAND is the admin RPC in kebab-case (CreateProvider → create-provider); flags are the
// request's fields (dashes or underscores). Any string field can also be read from a file
// (--secret-file=PATH), an environment variable (--secret-env=VAR) or stdin (--secret=-), so
// secrets need not appear on the command line. Enums accept their short names (openai,
// azure-openai, openai-compatible, anthropic). Output is a table, CSV with --csv (list responses:
// one row per element), or the response as JSON with --json.
//
// Global flags: --addr=HOST:PORT (default: the service's default port on 127.0.0.1, or
// TOLLGATECTL_<SERVICE>_ADDR), --admin-token-file=PATH (or TOLLGATECTL_ADMIN_TOKEN),
// --actor=NAME (who is acting, sent as x-tollgate-actor and written to the services' audit
// logs; default TOLLGATECTL_ACTOR, else $USER@hostname), --timeout=SECONDS (default 10),
// --json, --csv, and for services running mutual TLS (grpc.tls.*): --tls-cert=PEM
// --tls-key=PEM --tls-ca=PEM.
//
//   tollgatectl audit [--limit=N] [--json|--csv] [--auth-addr=...] [--quota-addr=...]
//                     [--router-addr=...] [--billing-addr=...]
// reads every service's audit log (ListAuditLog) and prints the newest N entries of all of
// them merged, newest first, with the service each came from. A service that cannot be read is
// named on stderr, the others are still printed, and the exit code is 1.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "tollgate/audit/v1/audit.pb.h"
#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/civil_date.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace {

namespace pb = google::protobuf;

struct ServiceInfo {
  std::string full_name;
  int default_port;
};

const std::map<std::string, ServiceInfo>& Services() {
  // Touching a message of each package links its descriptors into the generated pool.
  static const bool kLinked = tollgate::auth::v1::GetStatusRequest::descriptor() &&
                              tollgate::quota::v1::GetStatusRequest::descriptor() &&
                              tollgate::router::v1::GetStatusRequest::descriptor() &&
                              tollgate::billing::v1::GetStatusRequest::descriptor();
  (void)kLinked;
  static const std::map<std::string, ServiceInfo> kServices = {
      {"auth", {tollgate::auth::v1::AuthAdminService::service_full_name(), 7101}},
      {"quota", {tollgate::quota::v1::QuotaAdminService::service_full_name(), 7102}},
      {"router", {tollgate::router::v1::RouterAdminService::service_full_name(), 7103}},
      {"billing", {tollgate::billing::v1::BillingAdminService::service_full_name(), 7104}},
  };
  return kServices;
}

[[noreturn]] void Fail(const std::string& message, int code = 1) {
  std::cerr << "tollgatectl: " << message << "\n";
  std::exit(code);
}

std::string Kebab(const std::string& camel) {
  std::string out;
  for (char c : camel) {
    if (std::isupper(static_cast<unsigned char>(c))) {
      if (!out.empty()) out += '-';
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) Fail("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string EnvOr(const std::string& name, const std::string& fallback) {
  const char* v = std::getenv(name.c_str());
  return v && *v ? v : fallback;
}

// Sets `field` of `msg` from command-line text.
void SetField(pb::Message& msg, const pb::FieldDescriptor* f, const std::string& text) {
  const pb::Reflection* r = msg.GetReflection();
  auto fail = [&](const std::string& why) {
    Fail("--" + Kebab(f->camelcase_name()) + ": " + why, 2);
  };
  std::vector<std::string> items;
  if (f->is_repeated()) {
    std::stringstream ss(text);
    for (std::string item; std::getline(ss, item, ',');)
      if (!item.empty()) items.push_back(item);
  } else {
    items.push_back(text);
  }
  for (const auto& item : items) {
    try {
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_STRING:
          f->is_repeated() ? r->AddString(&msg, f, item) : r->SetString(&msg, f, item);
          break;
        case pb::FieldDescriptor::CPPTYPE_INT32:
          f->is_repeated() ? r->AddInt32(&msg, f, std::stoi(item))
                           : r->SetInt32(&msg, f, std::stoi(item));
          break;
        case pb::FieldDescriptor::CPPTYPE_INT64:
          f->is_repeated() ? r->AddInt64(&msg, f, std::stoll(item))
                           : r->SetInt64(&msg, f, std::stoll(item));
          break;
        case pb::FieldDescriptor::CPPTYPE_UINT32:
        case pb::FieldDescriptor::CPPTYPE_UINT64:
          r->SetUInt64(&msg, f, std::stoull(item));
          break;
        case pb::FieldDescriptor::CPPTYPE_DOUBLE:
          r->SetDouble(&msg, f, std::stod(item));
          break;
        case pb::FieldDescriptor::CPPTYPE_BOOL:
          if (item != "true" && item != "false") fail("expected true or false");
          r->SetBool(&msg, f, item == "true");
          break;
        case pb::FieldDescriptor::CPPTYPE_ENUM: {
          // Accept the full name or its tail: "openai" for PROVIDER_TYPE_OPENAI.
          std::string want = item;
          std::transform(want.begin(), want.end(), want.begin(),
                         [](unsigned char c) { return c == '-' ? '_' : std::toupper(c); });
          const pb::EnumValueDescriptor* match = nullptr;
          std::string names;
          for (int i = 0; i < f->enum_type()->value_count(); ++i) {
            const auto* v = f->enum_type()->value(i);
            names += (names.empty() ? "" : ", ") + v->name();
            const std::string& n = v->name();
            if (n == want ||
                (n.size() > want.size() &&
                 n.compare(n.size() - want.size() - 1, std::string::npos, "_" + want) == 0))
              match = v;
          }
          if (!match) fail("'" + item + "' is not one of " + names);
          f->is_repeated() ? r->AddEnum(&msg, f, match) : r->SetEnum(&msg, f, match);
          break;
        }
        case pb::FieldDescriptor::CPPTYPE_FLOAT:
          r->SetFloat(&msg, f, std::stof(item));
          break;
        case pb::FieldDescriptor::CPPTYPE_MESSAGE:
          fail("nested messages are set with --json-body");
      }
    } catch (const std::invalid_argument&) {
      fail("'" + item + "' is not a number");
    } catch (const std::out_of_range&) {
      fail("'" + item + "' is out of range");
    }
  }
}

// An enum value without its enum's own prefix: PROVIDER_TYPE_AZURE_OPENAI → azure-openai.
std::string ShortName(const pb::EnumValueDescriptor* value) {
  std::string name = value->name();
  std::string prefix;
  for (char c : value->type()->name()) {
    if (std::isupper(static_cast<unsigned char>(c)) && !prefix.empty()) prefix += '_';
    prefix += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  if (name.rfind(prefix + "_", 0) == 0) name = name.substr(prefix.size() + 1);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return c == '_' ? '-' : std::tolower(c); });
  return name;
}

std::string Scalar(const pb::Message& msg, const pb::FieldDescriptor* f) {
  const pb::Reflection* r = msg.GetReflection();
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return r->GetString(msg, f);
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return std::to_string(r->GetInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return std::to_string(r->GetInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return std::to_string(r->GetUInt32(msg, f));
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return std::to_string(r->GetUInt64(msg, f));
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return r->GetBool(msg, f) ? "true" : "false";
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return std::to_string(r->GetDouble(msg, f));
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return std::to_string(r->GetFloat(msg, f));
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return ShortName(r->GetEnum(msg, f));
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return "";
  }
  return "";
}

// One row of cells: scalars, one level of nested messages ("health.state"), lists joined. A list
// of messages is one cell, "k=v k=v; k=v ...", where `skip_defaults` leaves out the fields at
// their default (0, empty, false) so that it stays readable, e.g. a key's per-model health:
// "upstream_model=gpt-4o state=open consecutive_failures=3 breaker_open_until_ms=...".
void Flatten(const pb::Message& msg, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& row, bool skip_defaults = false) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    if (skip_defaults && !f->is_repeated() && !r->HasField(msg, f)) continue;
    std::string name = prefix + f->name();
    if (f->is_repeated()) {
      std::string joined;
      for (int j = 0; j < r->FieldSize(msg, f); ++j) {
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
          std::vector<std::pair<std::string, std::string>> sub;
          Flatten(r->GetRepeatedMessage(msg, f, j), "", sub, /*skip_defaults=*/true);
          std::string cell;
          for (const auto& [k, v] : sub) cell += (cell.empty() ? "" : " ") + k + "=" + v;
          joined += (joined.empty() ? "" : "; ") + cell;
        } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
          joined += (joined.empty() ? "" : ",") + r->GetRepeatedString(msg, f, j);
        } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_INT64) {
          joined += (joined.empty() ? "" : ",") + std::to_string(r->GetRepeatedInt64(msg, f, j));
        }
      }
      row.emplace_back(name, joined);
    } else if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      Flatten(r->GetMessage(msg, f), name + ".", row);
    } else {
      row.emplace_back(name, Scalar(msg, f));
    }
  }
}

void PrintTable(const std::vector<std::vector<std::pair<std::string, std::string>>>& rows) {
  if (rows.empty()) {
    std::cout << "(none)\n";
    return;
  }
  std::vector<size_t> width;
  for (const auto& [k, v] : rows[0]) width.push_back(k.size());
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], row[i].second.size());
  auto line = [&](auto get) {
    for (size_t i = 0; i < width.size(); ++i)
      std::cout << std::left << std::setw(static_cast<int>(width[i])) << get(i)
                << (i + 1 < width.size() ? "  " : "\n");
  };
  line([&](size_t i) {
    std::string h = rows[0][i].first;
    std::transform(h.begin(), h.end(), h.begin(), ::toupper);
    return h;
  });
  for (const auto& row : rows) line([&](size_t i) { return row[i].second; });
}

std::string CsvCell(const std::string& v) {
  if (v.find_first_of(",\"\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

void PrintCsv(const std::vector<std::vector<std::pair<std::string, std::string>>>& rows) {
  if (rows.empty()) return;
  for (size_t i = 0; i < rows[0].size(); ++i)
    std::cout << CsvCell(rows[0][i].first) << (i + 1 < rows[0].size() ? "," : "\n");
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i)
      std::cout << CsvCell(row[i].second) << (i + 1 < row.size() ? "," : "\n");
}

void PrintHuman(const pb::Message& resp, bool csv) {
  const pb::Descriptor* d = resp.GetDescriptor();
  const pb::Reflection* r = resp.GetReflection();
  // A list response: one table row per element.
  if (d->field_count() == 1 && d->field(0)->is_repeated() &&
      d->field(0)->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
    std::vector<std::vector<std::pair<std::string, std::string>>> rows;
    for (int j = 0; j < r->FieldSize(resp, d->field(0)); ++j) {
      rows.emplace_back();
      Flatten(r->GetRepeatedMessage(resp, d->field(0), j), "", rows.back());
    }
    csv ? PrintCsv(rows) : PrintTable(rows);
    return;
  }
  std::vector<std::pair<std::string, std::string>> row;
  Flatten(resp, "", row);
  if (csv) {
    PrintCsv({row});
    return;
  }
  if (row.empty()) {
    std::cout << "ok\n";
    return;
  }
  size_t w = 0;
  for (const auto& [k, v] : row) w = std::max(w, k.size());
  for (const auto& [k, v] : row)
    std::cout << std::left << std::setw(static_cast<int>(w)) << k << "  " << v << "\n";
}

void Help(const std::string& svc, const pb::ServiceDescriptor* sd) {
  std::cout << "tollgatectl " << svc << " COMMAND [--field=value ...]\n\ncommands:\n";
  for (int i = 0; i < sd->method_count(); ++i) {
    const auto* m = sd->method(i);
    std::cout << "  " << Kebab(m->name());
    for (int j = 0; j < m->input_type()->field_count(); ++j) {
      const auto* f = m->input_type()->field(j);
      std::cout << " --" << Kebab(f->camelcase_name());
      // An enum's values, e.g. --type=openai|azure-openai|openai-compatible|anthropic.
      if (const auto* e = f->enum_type()) {
        std::string values;
        for (int k = 0; k < e->value_count(); ++k) {
          if (e->value(k)->number() == 0) continue;  // UNSPECIFIED
          values += (values.empty() ? "=" : "|") + ShortName(e->value(k));
        }
        std::cout << values;
      }
    }
    std::cout << "\n";
  }
}

// How to reach the services, from the global flags.
struct Connection {
  std::string token;
  std::string actor;
  std::string tls_cert, tls_key, tls_ca;
  int timeout_s = 10;
};

std::string DefaultActor() {
  std::string actor = EnvOr("TOLLGATECTL_ACTOR", "");
  if (!actor.empty()) return actor;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = 0;
  return EnvOr("USER", "unknown") + "@" + (host[0] ? host : "localhost");
}

std::string Address(const std::string& svc, const std::string& given) {
  if (!given.empty()) return given;
  std::string upper = svc;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  return EnvOr("TOLLGATECTL_" + upper + "_ADDR",
               "127.0.0.1:" + std::to_string(Services().at(svc).default_port));
}

// One unary call of `method` at `addr`; fills `resp` on success.
grpc::Status Call(const Connection& conn, const std::string& addr,
                  const pb::MethodDescriptor* method, const pb::Message& req, pb::Message* resp) {
  std::string payload;
  req.SerializeToString(&payload);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!conn.tls_cert.empty() || !conn.tls_key.empty() || !conn.tls_ca.empty()) {
    if (conn.tls_cert.empty() || conn.tls_key.empty() || conn.tls_ca.empty())
      Fail("--tls-cert, --tls-key and --tls-ca go together", 2);
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFile(conn.tls_ca);
    options.pem_cert_chain = ReadFile(conn.tls_cert);
    options.pem_private_key = ReadFile(conn.tls_key);
    creds = grpc::SslCredentials(options);
  }
  grpc::GenericStub stub(grpc::CreateChannel(addr, creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(conn.timeout_s));
  if (!conn.token.empty()) ctx.AddMetadata("authorization", "Bearer " + conn.token);
  // Printable ASCII only: gRPC refuses other bytes in a metadata value.
  std::string actor;
  for (char c : conn.actor)
    if (c >= 0x20 && c < 0x7f) actor += c;
  if (!actor.empty()) ctx.AddMetadata("x-tollgate-actor", actor);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request_buf(&slice, 1), response_buf;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/" + method->service()->full_name() + "/" + method->name(),
                 grpc::StubOptions(), &request_buf, &response_buf, [&](grpc::Status s) {
                   std::lock_guard lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_one();
                 });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  (void)response_buf.Dump(&slices);
  std::string bytes;
  for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (!resp->ParseFromString(bytes))
    return grpc::Status(grpc::StatusCode::INTERNAL, "could not parse the response");
  return status;
}

std::string Describe(const grpc::Status& status, const std::string& svc, const std::string& addr) {
  std::string code;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      code = "unavailable (is the " + svc + " service running at " + addr + "?)";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      code = "unauthenticated";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      code = "timed out";
      break;
    default:
      code = "error " + std::to_string(status.error_code());
  }
  return code + ": " + status.error_message();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string UtcTime(int64_t at_ms) {
  return tollgate::FormatTimestamp(
      std::chrono::sys_time<std::chrono::milliseconds>(std::chrono::milliseconds(at_ms)));
}

// tollgatectl audit: every service's ListAuditLog, merged newest first.
int Audit(const Connection& conn, const std::vector<std::string>& rest,
          const std::map<std::string, std::string>& addrs, bool json, bool csv) {
  int32_t limit = 100;
  for (size_t i = 1; i < rest.size(); ++i) {
    if (rest[i].rfind("--limit=", 0) == 0) {
      try {
        limit = std::stoi(rest[i].substr(8));
      } catch (const std::exception&) {
        Fail("--limit: '" + rest[i].substr(8) + "' is not a number", 2);
      }
      if (limit <= 0) Fail("--limit must be at least 1", 2);
    } else {
      Fail("unexpected argument '" + rest[i] + "' for audit (--limit=N, --json, --csv)", 2);
    }
  }
  struct Row {
    std::string service;
    tollgate::audit::v1::AuditEntry entry;
  };
  std::vector<Row> rows;
  int failed = 0;
  for (const char* svc : {"auth", "quota", "router", "billing"}) {
    const pb::ServiceDescriptor* sd =
        pb::DescriptorPool::generated_pool()->FindServiceByName(Services().at(svc).full_name);
    const pb::MethodDescriptor* method = sd ? sd->FindMethodByName("ListAuditLog") : nullptr;
    if (!method) Fail(std::string("no ListAuditLog in ") + svc);
    pb::DynamicMessageFactory factory;
    std::unique_ptr<pb::Message> req(factory.GetPrototype(method->input_type())->New());
    SetField(*req, method->input_type()->FindFieldByName("limit"), std::to_string(limit));
    std::unique_ptr<pb::Message> resp(factory.GetPrototype(method->output_type())->New());
    auto it = addrs.find(svc);
    const std::string addr = Address(svc, it == addrs.end() ? "" : it->second);
    grpc::Status status = Call(conn, addr, method, *req, resp.get());
    if (!status.ok()) {
      std::cerr << "tollgatectl: audit: " << svc << ": " << Describe(status, svc, addr) << "\n";
      ++failed;
      continue;
    }
    // The entries are the shared tollgate.audit.v1.AuditEntry: reparse them as that type.
    const pb::FieldDescriptor* f = resp->GetDescriptor()->FindFieldByName("entries");
    for (int j = 0; j < resp->GetReflection()->FieldSize(*resp, f); ++j) {
      Row row{svc, {}};
      row.entry.ParseFromString(
          resp->GetReflection()->GetRepeatedMessage(*resp, f, j).SerializeAsString());
      rows.push_back(std::move(row));
    }
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return std::make_tuple(b.entry.at_ms(), b.entry.id()) <
           std::make_tuple(a.entry.at_ms(), a.entry.id());
  });
  if (rows.size() > static_cast<size_t>(limit)) rows.resize(static_cast<size_t>(limit));
  if (json) {
    std::cout << "[";
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& e = rows[i].entry;
      std::cout << (i ? ",\n " : "") << "{\"service\":" << JsonString(rows[i].service)
                << ",\"id\":" << e.id() << ",\"at_ms\":" << e.at_ms()
                << ",\"at\":" << JsonString(UtcTime(e.at_ms()))
                << ",\"actor\":" << JsonString(e.actor())
                << ",\"action\":" << JsonString(e.action())
                << ",\"target\":" << JsonString(e.target())
                << ",\"details\":" << (e.details().empty() ? "{}" : e.details()) << "}";
    }
    std::cout << "]\n";
  } else {
    std::vector<std::vector<std::pair<std::string, std::string>>> table;
    for (const auto& row : rows) {
      const auto& e = row.entry;
      table.push_back({{"service", row.service},
                       {"at", UtcTime(e.at_ms())},
                       {"actor", e.actor()},
                       {"action", e.action()},
                       {"target", e.target()},
                       {"details", e.details()}});
    }
    if (csv) {
      if (table.empty()) std::cout << "service,at,actor,action,target,details\n";
      PrintCsv(table);
    } else {
      PrintTable(table);
    }
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool json = false, csv = false;
  std::string addr, token_file, json_body, tls_cert, tls_key, tls_ca;
  std::string actor = DefaultActor();
  std::map<std::string, std::string> service_addrs;  // --auth-addr= ... (for audit)
  int timeout_s = 10;
  std::vector<std::string> rest;
  for (const auto& a : args) {
    bool service_addr = false;
    for (const auto& [name, info] : Services()) {
      const std::string flag = "--" + name + "-addr=";
      if (a.rfind(flag, 0) == 0) {
        service_addrs[name] = a.substr(flag.size());
        service_addr = true;
      }
    }
    if (service_addr) continue;
    if (a == "--json")
      json = true;
    else if (a == "--csv")
      csv = true;
    else if (a.rfind("--tls-cert=", 0) == 0)
      tls_cert = a.substr(11);
    else if (a.rfind("--tls-key=", 0) == 0)
      tls_key = a.substr(10);
    else if (a.rfind("--tls-ca=", 0) == 0)
      tls_ca = a.substr(9);
    else if (a.rfind("--addr=", 0) == 0)
      addr = a.substr(7);
    else if (a.rfind("--admin-token-file=", 0) == 0)
      token_file = a.substr(19);
    else if (a.rfind("--actor=", 0) == 0)
      actor = a.substr(8);
    else if (a.rfind("--timeout=", 0) == 0)
      timeout_s = std::atoi(a.c_str() + 10);
    else if (a.rfind("--json-body=", 0) == 0)
      json_body = a.substr(12);
    else
      rest.push_back(a);
  }
  if (rest.empty() || rest[0] == "help" || rest[0] == "--help") {
    std::cout << "usage: tollgatectl [--addr=HOST:PORT] [--admin-token-file=PATH] [--actor=NAME] "
                 "[--json|--csv] SERVICE COMMAND [--field=value ...]\n"
                 "       tollgatectl audit [--limit=N] [--json|--csv] [--auth-addr=HOST:PORT] ...\n"
                 "services: auth, quota, router, billing "
                 "(tollgatectl SERVICE help lists its commands)\n";
    return rest.empty() ? 2 : 0;
  }
  Connection conn;
  conn.token = token_file.empty() ? EnvOr("TOLLGATECTL_ADMIN_TOKEN", "") : ReadFile(token_file);
  conn.actor = actor;
  conn.tls_cert = tls_cert;
  conn.tls_key = tls_key;
  conn.tls_ca = tls_ca;
  conn.timeout_s = timeout_s;
  if (rest[0] == "audit") return Audit(conn, rest, service_addrs, json, csv);
  auto svc_it = Services().find(rest[0]);
  if (svc_it == Services().end()) Fail("unknown service '" + rest[0] + "'", 2);
  const std::string& svc = svc_it->first;
  const pb::ServiceDescriptor* sd =
      pb::DescriptorPool::generated_pool()->FindServiceByName(svc_it->second.full_name);
  if (!sd) Fail("no descriptor for " + svc_it->second.full_name);
  if (rest.size() < 2 || rest[1] == "help" || rest[1] == "--help") {
    Help(svc, sd);
    return rest.size() < 2 ? 2 : 0;
  }
  const pb::MethodDescriptor* method = nullptr;
  for (int i = 0; i < sd->method_count(); ++i)
    if (Kebab(sd->method(i)->name()) == rest[1]) method = sd->method(i);
  if (!method)
    Fail("unknown command '" + rest[1] + "' for " + svc + " (try: tollgatectl " + svc + " help)",
         2);

  pb::DynamicMessageFactory factory;
  std::unique_ptr<pb::Message> req(factory.GetPrototype(method->input_type())->New());
  if (!json_body.empty()) {
    auto st = pb::util::JsonStringToMessage(json_body, req.get());
    if (!st.ok()) Fail("--json-body: " + std::string(st.message()), 2);
  }
  for (size_t i = 2; i < rest.size(); ++i) {
    const std::string& a = rest[i];
    if (a.rfind("--", 0) != 0) Fail("unexpected argument '" + a + "'", 2);
    auto eq = a.find('=');
    std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::string value = eq == std::string::npos ? "true" : a.substr(eq + 1);
    std::replace(name.begin(), name.end(), '-', '_');
    std::string source;
    for (const char* suffix : {"_file", "_env"}) {
      std::string s(suffix);
      if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0 &&
          !method->input_type()->FindFieldByName(name)) {
        source = s;
        name = name.substr(0, name.size() - s.size());
      }
    }
    const pb::FieldDescriptor* f = method->input_type()->FindFieldByName(name);
    if (!f) Fail("unknown flag --" + a.substr(2, eq - 2) + " for " + rest[1], 2);
    if (source == "_file")
      value = ReadFile(value);
    else if (source == "_env") {
      const char* v = std::getenv(value.c_str());
      if (!v) Fail("environment variable " + value + " is not set", 2);
      value = v;
    } else if (value == "-" && f->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING) {
      std::getline(std::cin, value);
    }
    SetField(*req, f, value);
  }

  if (addr.empty() && service_addrs.count(svc)) addr = service_addrs[svc];
  addr = Address(svc, addr);
  std::unique_ptr<pb::Message> resp(factory.GetPrototype(method->output_type())->New());
  grpc::Status status = Call(conn, addr, method, *req, resp.get());
  if (!status.ok()) Fail(svc + " " + rest[1] + ": " + Describe(status, svc, addr));
  if (json) {
    std::string out;
    pb::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    opts.always_print_primitive_fields = true;
    (void)pb::util::MessageToJsonString(*resp, &out, opts);
    std::cout << out << "\n";
  } else {
    PrintHuman(*resp, csv);
  }
  return 0;
}
