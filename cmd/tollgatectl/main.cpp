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
// azure-openai). Output is a table, CSV with --csv (list responses: one row per element), or
// the response as JSON with --json.
//
// Global flags: --addr=HOST:PORT (default: the service's default port on 127.0.0.1, or
// TOLLGATECTL_<SERVICE>_ADDR), --admin-token-file=PATH (or TOLLGATECTL_ADMIN_TOKEN),
// --timeout=SECONDS (default 10), --json, --csv, and for services running mutual TLS
// (grpc.tls.*): --tls-cert=PEM --tls-key=PEM --tls-ca=PEM.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
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
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      // Drop the enum's own prefix: PROVIDER_TYPE_OPENAI → openai.
      std::string name = r->GetEnum(msg, f)->name();
      std::string prefix;
      for (char c : f->enum_type()->name()) {
        if (std::isupper(static_cast<unsigned char>(c)) && !prefix.empty()) prefix += '_';
        prefix += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      }
      if (name.rfind(prefix + "_", 0) == 0) name = name.substr(prefix.size() + 1);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return c == '_' ? '-' : std::tolower(c); });
      return name;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return "";
  }
  return "";
}

// One row of cells: scalars, one level of nested messages ("health.state"), lists joined.
void Flatten(const pb::Message& msg, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& row) {
  const pb::Descriptor* d = msg.GetDescriptor();
  const pb::Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const auto* f = d->field(i);
    std::string name = prefix + f->name();
    if (f->is_repeated()) {
      std::string joined;
      for (int j = 0; j < r->FieldSize(msg, f); ++j) {
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
          std::vector<std::pair<std::string, std::string>> sub;
          Flatten(r->GetRepeatedMessage(msg, f, j), "", sub);
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
    for (int j = 0; j < m->input_type()->field_count(); ++j)
      std::cout << " --" << Kebab(m->input_type()->field(j)->camelcase_name());
    std::cout << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool json = false, csv = false;
  std::string addr, token_file, json_body, tls_cert, tls_key, tls_ca;
  int timeout_s = 10;
  std::vector<std::string> rest;
  for (const auto& a : args) {
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
    else if (a.rfind("--timeout=", 0) == 0)
      timeout_s = std::atoi(a.c_str() + 10);
    else if (a.rfind("--json-body=", 0) == 0)
      json_body = a.substr(12);
    else
      rest.push_back(a);
  }
  if (rest.empty() || rest[0] == "help" || rest[0] == "--help") {
    std::cout << "usage: tollgatectl [--addr=HOST:PORT] [--admin-token-file=PATH] [--json|--csv] "
                 "SERVICE COMMAND [--field=value ...]\nservices: auth, quota, router, billing "
                 "(tollgatectl SERVICE help lists its commands)\n";
    return rest.empty() ? 2 : 0;
  }
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

  std::string upper = svc;
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  if (addr.empty())
    addr = EnvOr("TOLLGATECTL_" + upper + "_ADDR",
                 "127.0.0.1:" + std::to_string(svc_it->second.default_port));
  std::string token =
      token_file.empty() ? EnvOr("TOLLGATECTL_ADMIN_TOKEN", "") : ReadFile(token_file);

  std::string payload;
  req->SerializeToString(&payload);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!tls_cert.empty() || !tls_key.empty() || !tls_ca.empty()) {
    if (tls_cert.empty() || tls_key.empty() || tls_ca.empty())
      Fail("--tls-cert, --tls-key and --tls-ca go together", 2);
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFile(tls_ca);
    options.pem_cert_chain = ReadFile(tls_cert);
    options.pem_private_key = ReadFile(tls_key);
    creds = grpc::SslCredentials(options);
  }
  grpc::GenericStub stub(grpc::CreateChannel(addr, creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  grpc::Slice slice(payload);
  grpc::ByteBuffer request_buf(&slice, 1), response_buf;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/" + sd->full_name() + "/" + method->name(), grpc::StubOptions(),
                 &request_buf, &response_buf, [&](grpc::Status s) {
                   std::lock_guard lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_one();
                 });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (!status.ok()) {
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
    Fail(svc + " " + rest[1] + ": " + code + ": " + status.error_message());
  }
  std::vector<grpc::Slice> slices;
  (void)response_buf.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  std::unique_ptr<pb::Message> resp(factory.GetPrototype(method->output_type())->New());
  if (!resp->ParseFromString(bytes)) Fail("could not parse the response");
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
