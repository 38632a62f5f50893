// Cross-process tests of the tollgate binary: real processes, a real
// PostgreSQL (one fresh database per service), real gRPC health checks,
// the real /metrics endpoint and the real SIGTERM path.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/generic/generic_stub.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "test/child_process.h"
#include "test/pg_fixture.h"
#include "tollgate/grpc_server.h"
#include "tollgate/internal_auth.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace {

using tollgate::testing::TestDatabase;

std::string Binary() { return TOLLGATE_BIN_PATH; }

// The binary under test, its stderr (the JSON log) captured line by line.
class Process : public tollgate::testing::ChildProcess {
 public:
  Process(const std::vector<std::string>& args, const std::map<std::string, std::string>& env)
      : ChildProcess(args, {env, Capture::kStderr}) {}
};

std::string HttpGet(int port, const std::string& path, const std::string& extra_headers = "") {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  std::string req =
      "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers + "\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  return resp;
}

grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& target,
                                                            const std::string& service = "") {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  auto status = stub->Check(&ctx, req, &resp);
  return status.ok() ? resp.status() : grpc::health::v1::HealthCheckResponse::UNKNOWN;
}

const std::vector<std::string> kServices = {"auth", "quota", "router", "billing"};

class SuiteProcessTest : public ::testing::Test {
 protected:
  std::map<std::string, std::string> Env() {
    std::map<std::string, std::string> env = {
        {"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"},
        {"TOLLGATE_EDGE__LISTEN", "127.0.0.1:0"},
        {"TOLLGATE_SHUTDOWN__DRAIN_TIMEOUT", "5s"},
        {"TOLLGATE_ADMIN__TOKEN", "test-admin-token"},
        // The edge's usage spool belongs to this test's databases only.
        {"TOLLGATE_EDGE__SPOOL_DIR", spool_dir_},
        {"TOLLGATE_ROUTER__MASTER_KEY", std::string(64, 'a')},
    };
    for (const auto& svc : kServices) {
      std::string up = svc;
      for (auto& c : up) c = static_cast<char>(toupper(c));
      env["TOLLGATE_" + up + "__GRPC_LISTEN"] = "127.0.0.1:0";
      env["TOLLGATE_" + up + "__DATABASE__DSN"] = dbs_[svc].dsn();
    }
    return env;
  }
  std::string spool_dir_ = [] {
    char tmpl[] = "/tmp/tollgate-spool-test.XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  void TearDown() override { std::filesystem::remove_all(spool_dir_); }
  std::map<std::string, TestDatabase> dbs_ = [] {
    std::map<std::string, TestDatabase> m;
    for (const auto& s : kServices) m.try_emplace(s);
    return m;
  }();
};

TEST_F(SuiteProcessTest, AllTargetsServeHealthAndMetricsAndExitZeroOnSigterm) {
  Process p({Binary(), "--target=all"}, Env());
  std::map<std::string, std::string> grpc_listen;
  int edge_port = 0, metrics_port = 0;
  p.WaitForLog([&](const nlohmann::json& j) {
    if (j.value("msg", "") == "serving gRPC") grpc_listen[j["component"]] = j["listen"];
    if (j.value("msg", "") == "serving HTTP") {
      auto l = j["listen"].get<std::string>();
      edge_port = std::stoi(l.substr(l.rfind(':') + 1));
    }
    if (j.value("msg", "") == "tollgate started") metrics_port = j["metrics_port"];
    return metrics_port != 0 || j.value("msg", "") == "start-up failed";
  });
  ASSERT_NE(metrics_port, 0) << p.RestOfOutput();
  ASSERT_EQ(grpc_listen.size(), kServices.size()) << p.output();
  for (const auto& [svc, listen] : grpc_listen) {
    EXPECT_EQ(Health(listen), grpc::health::v1::HealthCheckResponse::SERVING) << svc;
    std::string upper = svc;
    upper[0] = static_cast<char>(toupper(upper[0]));
    EXPECT_EQ(Health(listen, "tollgate." + svc + ".v1." + upper + "AdminService"),
              grpc::health::v1::HealthCheckResponse::SERVING)
        << svc;
  }
  EXPECT_NE(HttpGet(edge_port, "/healthz").find("200 OK"), std::string::npos);
  EXPECT_NE(HttpGet(edge_port, "/readyz").find("200 OK"), std::string::npos);
  std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_NE(metrics.find("tollgate_pg_pool_connections"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("tollgate_edge_http_requests_total"), std::string::npos);
  // Migrations ran against each service's own database and nowhere else.
  for (const auto& svc : kServices) {
    pqxx::connection c(dbs_[svc].dsn());
    pqxx::nontransaction tx(c);
    EXPECT_TRUE(tx.exec("SELECT to_regclass('schema_migrations') IS NOT NULL")[0][0].as<bool>())
        << svc;
  }

  p.Signal(SIGTERM);
  int code = p.Wait(std::chrono::seconds(15));
  std::string out = p.RestOfOutput();
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("\"msg\":\"stopped\""), std::string::npos) << out;
  EXPECT_EQ(out.find("test-admin-token"), std::string::npos) << "a secret reached the logs";
}

TEST_F(SuiteProcessTest, OneTargetRunsAlone) {
  Process p({Binary(), "--target=router"}, Env());
  std::string listen;
  p.WaitForLog([&](const nlohmann::json& j) {
    if (j.value("msg", "") == "serving gRPC") listen = j["listen"];
    return j.value("msg", "") == "tollgate started" || j.value("msg", "") == "start-up failed";
  });
  ASSERT_FALSE(listen.empty()) << p.RestOfOutput();
  EXPECT_EQ(Health(listen), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(p.output().find("\"component\":\"auth\""), std::string::npos) << "auth started too";
  // The health subcommand is what probes and the launcher use.
  std::string cmd = Binary() + " health " + listen + " >/dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
}

TEST_F(SuiteProcessTest, RefusesADatabaseWithANewerSchema) {
  {
    pqxx::connection c(dbs_["auth"].dsn());
    pqxx::nontransaction tx(c);
    tx.exec(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL,"
        " checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
        "INSERT INTO schema_migrations VALUES (9999, 'from_the_future', 'x', now())");
  }
  Process p({Binary(), "--target=auth"}, Env());
  int code = p.Wait(std::chrono::seconds(30));
  std::string out = p.RestOfOutput();
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("schema version 9999"), std::string::npos) << out;
}

TEST_F(SuiteProcessTest, BadConfigFailsFastNamingTheKey) {
  auto env = Env();
  env["TOLLGATE_AUTH__DATABASE__POOL_SIZE"] = "many";
  Process p({Binary(), "--target=auth"}, env);
  EXPECT_EQ(p.Wait(std::chrono::seconds(10)), 2);
  EXPECT_NE(p.RestOfOutput().find("auth.database.pool_size"), std::string::npos) << p.output();
}

TEST_F(SuiteProcessTest, MigrateSubcommandsRunConcurrentlyFromTwoProcesses) {
  auto env = Env();
  Process a({Binary(), "migrate", "--target=auth,router"}, env);
  Process b({Binary(), "migrate", "--target=auth,router"}, env);
  EXPECT_EQ(a.Wait(std::chrono::seconds(30)), 0) << a.RestOfOutput();
  EXPECT_EQ(b.Wait(std::chrono::seconds(30)), 0) << b.RestOfOutput();
  for (const std::string svc : {"auth", "router"}) {
    pqxx::connection c(dbs_[svc].dsn());
    pqxx::nontransaction tx(c);
    auto dupes = tx.exec("SELECT count(*) - count(DISTINCT version) FROM schema_migrations");
    EXPECT_EQ(dupes[0][0].as<int>(), 0) << svc;
  }
}

}  // namespace

namespace {

TEST(ProcessStartupTest, SigtermWhileWaitingForTheDatabaseExitsZeroPromptly) {
  Process p({Binary(), "--target=auth"},
            {{"TOLLGATE_AUTH__DATABASE__DSN", "host=/nonexistent-socket-dir dbname=x"},
             {"TOLLGATE_AUTH__GRPC_LISTEN", "127.0.0.1:0"},
             {"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"}});
  auto waiting = p.WaitForLog(
      [](const nlohmann::json& j) { return j.value("msg", "") == "waiting for the database"; });
  ASSERT_FALSE(waiting.is_null()) << p.RestOfOutput();
  auto start = std::chrono::steady_clock::now();
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(5)), 0) << p.RestOfOutput();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

}  // namespace

namespace {

// A throwaway CA and one certificate (server and client use) for 127.0.0.1.
std::string MakeCertificates() {
  char tmpl[] = "/tmp/tollgate-tls.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string script =
      "cd " + dir +
      " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      " -keyout ca.key -out ca.pem -days 1 -subj /CN=tollgate-test-ca 2>/dev/null"
      " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      " -keyout svc.key -out svc.csr -subj /CN=localhost 2>/dev/null"
      " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,"
      "clientAuth\\n' > ext"
      " && openssl x509 -req -in svc.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out svc.pem"
      " -days 1 -extfile ext 2>/dev/null";
  if (std::system(script.c_str()) != 0) ADD_FAILURE() << "openssl failed";
  return dir;
}

class MutualTlsTest : public SuiteProcessTest {};

TEST_F(MutualTlsTest, ServicesRequireAndPresentCertificates) {
  std::string certs = MakeCertificates();
  auto env = Env();
  env["TOLLGATE_GRPC__TLS__CERT_FILE"] = certs + "/svc.pem";
  env["TOLLGATE_GRPC__TLS__KEY_FILE"] = certs + "/svc.key";
  env["TOLLGATE_GRPC__TLS__CA_FILE"] = certs + "/ca.pem";
  Process p({Binary(), "--target=all"}, env);
  std::map<std::string, std::string> grpc_listen;
  int edge_port = 0;
  p.WaitForLog([&](const nlohmann::json& j) {
    if (j.value("msg", "") == "serving gRPC") grpc_listen[j["component"]] = j["listen"];
    if (j.value("msg", "") == "serving HTTP") {
      auto l = j["listen"].get<std::string>();
      edge_port = std::stoi(l.substr(l.rfind(':') + 1));
    }
    return j.value("msg", "") == "tollgate started" || j.value("msg", "") == "start-up failed";
  });
  ASSERT_EQ(grpc_listen.size(), 4u) << p.RestOfOutput();
  const std::string router = grpc_listen["router"];

  // A plaintext client is refused.
  EXPECT_EQ(Health(router), grpc::health::v1::HealthCheckResponse::UNKNOWN);
  // The probe with the same certificates (from the environment) gets through.
  std::string with_tls = "TOLLGATE_GRPC__TLS__CERT_FILE=" + certs +
                         "/svc.pem TOLLGATE_GRPC__TLS__KEY_FILE=" + certs +
                         "/svc.key TOLLGATE_GRPC__TLS__CA_FILE=" + certs + "/ca.pem ";
  EXPECT_EQ(std::system((with_tls + Binary() + " health " + router + " >/dev/null").c_str()), 0);
  // A TLS client without a client certificate is refused by the server.
  auto ca_only = grpc::SslCredentialsOptions();
  {
    std::ifstream in(certs + "/ca.pem");
    std::stringstream ss;
    ss << in.rdbuf();
    ca_only.pem_root_certs = ss.str();
  }
  auto stub =
      grpc::health::v1::Health::NewStub(grpc::CreateChannel(router, grpc::SslCredentials(ca_only)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_FALSE(stub->Check(&ctx, {}, &resp).ok()) << "no client certificate, yet served";
  // The edge, a client of auth, reaches it over mutual TLS: an unknown key is judged by
  // auth (401), not reported unreachable (503).
  std::string reply = HttpGet(edge_port, "/v1/models",
                              "Authorization: Bearer sk-tg-unknownunknownunknownunknown\r\n");
  EXPECT_NE(reply.find(" 401 "), std::string::npos) << reply;
  EXPECT_NE(reply.find("Incorrect API key"), std::string::npos) << reply;

  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  std::filesystem::remove_all(certs);
}

}  // namespace

namespace {

// ---- Internal trust (docs/architecture.md, "Trust") ----

constexpr char kAdminToken[] = "test-admin-token";
constexpr char kEdgeToken[] = "test-edge-service-token-0123456789";

std::string StartAllAndCollect(Process& p, std::map<std::string, std::string>& grpc_listen) {
  int metrics_port = 0;
  p.WaitForLog([&](const nlohmann::json& j) {
    if (j.value("msg", "") == "serving gRPC") grpc_listen[j["component"]] = j["listen"];
    if (j.value("msg", "") == "tollgate started") metrics_port = j["metrics_port"];
    return metrics_port != 0 || j.value("msg", "") == "start-up failed";
  });
  return metrics_port ? std::to_string(metrics_port) : "";
}

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  (void)buffer.Dump(&slices);
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

struct RpcMethod {
  std::string path;  // "/package.Service/Method"
  bool streaming = false;
};

// Every method of every service `target` serves, found through server reflection (asked as the
// admin, the only identity allowed to reflect): list_services, then the file of each service.
// Hand-encoded (the reflection proto's C++ code is not installed): field numbers from
// grpc/reflection/v1alpha/reflection.proto.
std::vector<RpcMethod> MethodsByReflection(const std::string& target) {
  namespace gpb = google::protobuf;
  grpc::GenericStub stub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + kAdminToken);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto next = [&] {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok;
  };
  call->StartCall(nullptr);
  if (!next()) ADD_FAILURE() << "reflection call did not start on " << target;
  auto ask = [&](int field, const std::string& value) {
    gpb::UnknownFieldSet request;
    request.AddLengthDelimited(field, value);
    std::string wire;
    request.SerializeToString(&wire);
    grpc::Slice slice(wire);
    grpc::ByteBuffer out(&slice, 1), in;
    call->Write(out, nullptr);
    EXPECT_TRUE(next()) << "reflection write";
    call->Read(&in, nullptr);
    EXPECT_TRUE(next()) << "reflection read (refused?) on " << target;
    return Bytes(in);
  };
  // The length-delimited values of `field` in the message `bytes`.
  auto nested = [](const std::string& bytes, int field) {
    gpb::UnknownFieldSet set;
    EXPECT_TRUE(set.ParseFromString(bytes));
    std::vector<std::string> values;
    for (int i = 0; i < set.field_count(); ++i)
      if (set.field(i).number() == field &&
          set.field(i).type() == gpb::UnknownField::TYPE_LENGTH_DELIMITED)
        values.push_back(set.field(i).length_delimited());
    return values;
  };
  std::vector<std::string> services;
  for (const auto& list : nested(ask(7, ""), 6))  // list_services → list_services_response
    for (const auto& service : nested(list, 1))   // ServiceResponse
      for (const auto& name : nested(service, 1)) services.push_back(name);
  std::vector<RpcMethod> methods;
  for (const auto& service : services) {
    bool found = false;
    // file_containing_symbol → file_descriptor_response.file_descriptor_proto
    for (const auto& files : nested(ask(4, service), 4)) {
      for (const auto& bytes : nested(files, 1)) {
        gpb::FileDescriptorProto file;
        EXPECT_TRUE(file.ParseFromString(bytes));
        for (const auto& s : file.service()) {
          if (file.package() + "." + s.name() != service) continue;
          found = true;
          for (const auto& m : s.method())
            methods.push_back(
                {"/" + service + "/" + m.name(), m.client_streaming() || m.server_streaming()});
        }
      }
    }
    EXPECT_TRUE(found) << "reflection gave no descriptor for " << service;
  }
  call->WritesDone(nullptr);
  next();
  grpc::Status status;
  call->Finish(&status, nullptr);
  next();
  return methods;
}

// One call of `method` with an empty request and the given authorization ("" : none).
grpc::Status CallWith(grpc::GenericStub& stub, const std::string& method,
                      const std::string& authorization) {
  grpc::ClientContext ctx;
  if (!authorization.empty()) ctx.AddMetadata("authorization", "Bearer " + authorization);
  // A streaming method that is served runs until the deadline: that is served too.
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1500));
  grpc::ByteBuffer request, response;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  std::mutex mu;
  std::condition_variable cv;
  std::optional<grpc::Status> result;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    std::lock_guard lock(mu);
    result = s;
    cv.notify_all();
  });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  return *result;
}

bool Refused(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

class InternalTrustTest : public SuiteProcessTest {
 protected:
  std::map<std::string, std::string> TrustEnv() {
    auto env = Env();
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE"] = kEdgeToken;
    return env;
  }
};

// Every method of every service, found through reflection on the real binary: no credential →
// UNAUTHENTICATED, an identity the table does not list → PERMISSION_DENIED, the listed one →
// served (an answer or a normal error, never a refusal). A method without a table entry fails.
TEST_F(InternalTrustTest, EveryMethodOfEveryServiceFollowsTheTable) {
  Process p({Binary(), "--target=all"}, TrustEnv());
  std::map<std::string, std::string> grpc_listen;
  ASSERT_FALSE(StartAllAndCollect(p, grpc_listen).empty()) << p.RestOfOutput();
  ASSERT_EQ(grpc_listen.size(), kServices.size()) << p.output();

  const std::map<tollgate::Identity, std::string> tokens = {
      {tollgate::Identity::kEdge, kEdgeToken}, {tollgate::Identity::kAdmin, kAdminToken}};
  size_t checked = 0;
  std::set<std::string> seen_services;
  for (const auto& [svc, listen] : grpc_listen) {
    auto methods = MethodsByReflection(listen);
    ASSERT_FALSE(methods.empty()) << svc;
    grpc::GenericStub stub(grpc::CreateChannel(listen, grpc::InsecureChannelCredentials()));
    for (const RpcMethod& m : methods) {
      seen_services.insert(m.path.substr(1, m.path.rfind('/') - 1));
      const tollgate::MethodRule* rule = tollgate::FindMethodRule(m.path);
      if (rule == nullptr) {
        ADD_FAILURE() << m.path << " (on " << svc
                      << ") has no entry in the authorisation table (common/src/internal_auth.cpp)";
        EXPECT_EQ(CallWith(stub, m.path, kAdminToken).error_code(),
                  grpc::StatusCode::PERMISSION_DENIED);
        continue;
      }
      ++checked;
      auto none = CallWith(stub, m.path, "");
      if (rule->anyone) {
        EXPECT_FALSE(Refused(none)) << m.path << " is open, yet: " << none.error_message();
      } else {
        EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << m.path;
        EXPECT_EQ(CallWith(stub, m.path, "not-a-token-of-anybody").error_code(),
                  grpc::StatusCode::UNAUTHENTICATED)
            << m.path;
      }
      for (const auto& [identity, token] : tokens) {
        auto s = CallWith(stub, m.path, token);
        if (rule->anyone || rule->allowed.Has(identity)) {
          EXPECT_FALSE(Refused(s)) << m.path << " as " << tollgate::IdentityName(identity) << ": "
                                   << s.error_code() << " " << s.error_message();
          EXPECT_NE(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << m.path;
        } else {
          EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
              << m.path << " as " << tollgate::IdentityName(identity);
        }
      }
    }
  }
  // Every service of proto/ was reached (and health and reflection).
  for (const std::string svc :
       {"tollgate.auth.v1.AuthService", "tollgate.auth.v1.AuthAdminService",
        "tollgate.quota.v1.QuotaService", "tollgate.quota.v1.QuotaAdminService",
        "tollgate.router.v1.RouterService", "tollgate.router.v1.RouterAdminService",
        "tollgate.billing.v1.BillingService", "tollgate.billing.v1.BillingAdminService",
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})
    EXPECT_TRUE(seen_services.count(svc)) << svc << " not found through reflection";
  EXPECT_GT(checked, 60u);

  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0);
  std::string out = p.RestOfOutput();
  EXPECT_EQ(out.find(kEdgeToken), std::string::npos) << "the service token reached the logs";
  EXPECT_EQ(out.find(kAdminToken), std::string::npos) << "the admin token reached the logs";
}

// What the issue's reviewer did: a stock client with the public proto and no credential asks the
// router for its routing table (the upstream secrets). Nothing comes back.
TEST_F(InternalTrustTest, AStockClientWithoutCredentialsGetsNoUpstreamSecrets) {
  for (bool configured : {true, false}) {  // a configured token, and the launcher-less default
    Process p({Binary(), "--target=all"}, configured ? TrustEnv() : Env());
    std::map<std::string, std::string> grpc_listen;
    ASSERT_FALSE(StartAllAndCollect(p, grpc_listen).empty()) << p.RestOfOutput();
    auto router = tollgate::router::v1::RouterService::NewStub(
        grpc::CreateChannel(grpc_listen["router"], grpc::InsecureChannelCredentials()));
    for (const std::string auth : {"", kAdminToken, "guess"}) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      if (!auth.empty()) ctx.AddMetadata("authorization", "Bearer " + auth);
      tollgate::router::v1::GetRoutingTableResponse table;
      auto status = router->GetRoutingTable(&ctx, {}, &table);
      EXPECT_TRUE(Refused(status)) << "'" << auth << "': " << status.error_code();
      EXPECT_EQ(table.ByteSizeLong(), 0u);
    }
    if (configured) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      ctx.AddMetadata("authorization", std::string("Bearer ") + kEdgeToken);
      tollgate::router::v1::GetRoutingTableResponse table;
      EXPECT_TRUE(router->GetRoutingTable(&ctx, {}, &table).ok()) << "the edge is served";
    }
    p.Signal(SIGTERM);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  }
}

// Tokens rotate in three rollouts (add the new one as *_rotation, swap, clear) and no process
// refuses a peer at any step: a server in the middle two steps accepts what clients one step
// behind or ahead send; a token of nobody is still refused.
TEST_F(InternalTrustTest, TokensRotateWithoutARefusal) {
  const std::string old_edge = kEdgeToken, new_edge = "edge-token-after-the-rotation";
  const std::string old_admin = kAdminToken, new_admin = "admin-token-after-the-rotation";
  const std::string table = "/tollgate.router.v1.RouterService/GetRoutingTable";
  const std::string status = "/tollgate.router.v1.RouterAdminService/GetStatus";
  for (bool swapped : {false, true}) {  // step 1: old + new accepted; step 2: new + old
    auto env = Env();
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE"] = swapped ? new_edge : old_edge;
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_ROTATION"] = swapped ? old_edge : new_edge;
    env["TOLLGATE_ADMIN__TOKEN"] = swapped ? new_admin : old_admin;
    env["TOLLGATE_ADMIN__TOKEN_ROTATION"] = swapped ? old_admin : new_admin;
    Process p({Binary(), "--target=router"}, env);
    std::map<std::string, std::string> listen;
    ASSERT_FALSE(StartAllAndCollect(p, listen).empty()) << p.RestOfOutput();
    grpc::GenericStub stub(
        grpc::CreateChannel(listen["router"], grpc::InsecureChannelCredentials()));
    for (const std::string& edge : {old_edge, new_edge}) {
      EXPECT_TRUE(CallWith(stub, table, edge).ok()) << "swapped=" << swapped;
      EXPECT_EQ(CallWith(stub, status, edge).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    }
    for (const std::string& admin : {old_admin, new_admin}) {
      EXPECT_TRUE(CallWith(stub, status, admin).ok()) << "swapped=" << swapped;
      EXPECT_EQ(CallWith(stub, table, admin).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    }
    EXPECT_EQ(CallWith(stub, table, "edge-token-of-nobody-at-all").error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    p.Signal(SIGTERM);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  }
  {  // A rotation token is held to the same rules as the token itself.
    auto env = Env();
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE"] = old_edge;
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_ROTATION"] = "short";
    Process p({Binary(), "--target=router"}, env);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 2);
    EXPECT_NE(p.RestOfOutput().find("edge_rotation is shorter"), std::string::npos);
  }
  {
    auto env = Env();
    env["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE"] = old_edge;
    env["TOLLGATE_ADMIN__TOKEN_ROTATION"] = old_edge;
    Process p({Binary(), "--target=router"}, env);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 2);
    EXPECT_NE(p.RestOfOutput().find("give each identity its own token"), std::string::npos);
  }
}

// A listener beyond loopback needs mutual TLS or a service token, or an explicit, loud
// grpc.allow_insecure.
TEST_F(InternalTrustTest, AnExposedListenerNeedsCredentialsOrAnExplicitAllowInsecure) {
  auto env = Env();
  env["TOLLGATE_ROUTER__GRPC_LISTEN"] = "0.0.0.0:0";
  {
    Process p({Binary(), "--target=router"}, env);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 1);
    std::string out = p.RestOfOutput();
    EXPECT_NE(out.find("grpc.allow_insecure"), std::string::npos) << out;
    EXPECT_EQ(out.find("serving gRPC"), std::string::npos) << out;
  }
  {
    auto with_token = env;
    with_token["TOLLGATE_GRPC__SERVICE_TOKENS__EDGE"] = kEdgeToken;
    Process p({Binary(), "--target=router"}, with_token);
    std::string metrics_port;
    std::map<std::string, std::string> listen;
    metrics_port = StartAllAndCollect(p, listen);
    ASSERT_FALSE(metrics_port.empty()) << p.RestOfOutput();
    std::string metrics = HttpGet(std::stoi(metrics_port), "/metrics");
    EXPECT_NE(metrics.find("tollgate_grpc_insecure{service=\"router\"} 0"), std::string::npos)
        << metrics;
    p.Signal(SIGTERM);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0);
  }
  {
    auto insecure = env;
    insecure["TOLLGATE_GRPC__ALLOW_INSECURE"] = "true";
    Process p({Binary(), "--target=router"}, insecure);
    std::map<std::string, std::string> listen;
    std::string metrics_port = StartAllAndCollect(p, listen);
    ASSERT_FALSE(metrics_port.empty()) << p.RestOfOutput();
    EXPECT_NE(p.output().find("INSECURE"), std::string::npos) << p.output();
    std::string metrics = HttpGet(std::stoi(metrics_port), "/metrics");
    EXPECT_NE(metrics.find("tollgate_grpc_insecure{service=\"router\"} 1"), std::string::npos)
        << metrics;
    // The network is trusted: no credential is the edge (never the admin, who needs its token).
    std::string target = "127.0.0.1:" + listen["router"].substr(listen["router"].rfind(':') + 1);
    grpc::GenericStub stub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    EXPECT_TRUE(CallWith(stub, "/tollgate.router.v1.RouterService/GetRoutingTable", "").ok());
    EXPECT_EQ(CallWith(stub, "/tollgate.router.v1.RouterAdminService/GetStatus", "").error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_EQ(CallWith(stub, "/tollgate.router.v1.RouterService/GetRoutingTable", "wrong-token")
                  .error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_TRUE(
        CallWith(stub, "/tollgate.router.v1.RouterAdminService/GetStatus", kAdminToken).ok());
    p.Signal(SIGTERM);
    EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0);
  }
}

}  // namespace

namespace {

// A throwaway CA `ca` in `dir` and leaf certificates signed by it, each with the given SANs,
// valid for `days` from now (-1: it expired a day ago).
void Issue(const std::string& dir, const std::string& ca, const std::string& name,
           const std::string& san, int days = 1) {
  std::string script =
      "cd " + dir + " && ( [ -f " + ca + ".pem ] || openssl req -x509 -newkey ec -pkeyopt " +
      "ec_paramgen_curve:prime256v1 -nodes -keyout " + ca + ".key -out " + ca +
      ".pem -days 1 -subj /CN=" + ca + " 2>/dev/null )" +
      " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " + name +
      ".key -out " + name + ".csr -subj /CN=" + name + " 2>/dev/null" +
      " && printf 'subjectAltName=" + san + "\\nextendedKeyUsage=serverAuth,clientAuth\\n' > " +
      name + ".ext" + " && openssl x509 -req -in " + name + ".csr -CA " + ca + ".pem -CAkey " + ca +
      ".key -CAcreateserial -out " + name + ".pem -days " + std::to_string(days) + " -extfile " +
      name + ".ext 2>/dev/null";
  if (std::system(script.c_str()) != 0) ADD_FAILURE() << "openssl failed for " << name;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Mutual TLS with identities: the client certificate's URI SAN (tollgate://edge,
// tollgate://admin) is the caller's identity, checked against the same table as tokens.
TEST_F(InternalTrustTest, CertificateIdentitiesFollowTheTable) {
  char tmpl[] = "/tmp/tollgate-tls-id.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  Issue(dir, "ca", "svc", "IP:127.0.0.1,DNS:localhost");  // the servers' (no identity)
  Issue(dir, "ca", "edge", "URI:tollgate://edge");
  Issue(dir, "ca", "admin", "URI:tollgate://admin");
  // The DNS form, as Helm's genSignedCert writes them (it cannot write URI SANs).
  Issue(dir, "ca", "edge-dns", "DNS:edge.tollgate.internal");
  Issue(dir, "ca", "admin-dns", "DNS:admin.tollgate.internal");
  Issue(dir, "ca", "nobody-dns", "DNS:router.tollgate.internal,DNS:tollgate-router.ns.svc");
  Issue(dir, "ca", "nobody", "URI:tollgate://router,DNS:nobody");
  Issue(dir, "other-ca", "stranger", "URI:tollgate://edge");  // right name, wrong CA
  Issue(dir, "ca", "expired", "URI:tollgate://edge", -1);     // right name and CA, expired
  auto env = Env();
  env["TOLLGATE_GRPC__TLS__CERT_FILE"] = dir + "/svc.pem";
  env["TOLLGATE_GRPC__TLS__KEY_FILE"] = dir + "/svc.key";
  env["TOLLGATE_GRPC__TLS__CA_FILE"] = dir + "/ca.pem";
  Process p({Binary(), "--target=router"}, env);
  std::map<std::string, std::string> listen;
  ASSERT_FALSE(StartAllAndCollect(p, listen).empty()) << p.RestOfOutput();
  const std::string target = listen["router"];

  auto stub_as = [&](const std::string& who) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadText(dir + "/ca.pem");
    o.pem_cert_chain = ReadText(dir + "/" + who + ".pem");
    o.pem_private_key = ReadText(dir + "/" + who + ".key");
    return std::make_unique<grpc::GenericStub>(
        grpc::CreateChannel(target, grpc::SslCredentials(o)));
  };
  const std::string table = "/tollgate.router.v1.RouterService/GetRoutingTable";
  const std::string status = "/tollgate.router.v1.RouterAdminService/GetStatus";
  const std::string health = "/grpc.health.v1.Health/Check";
  {
    auto edge = stub_as("edge");
    EXPECT_TRUE(CallWith(*edge, table, "").ok());
    EXPECT_EQ(CallWith(*edge, status, "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
    // A wrong token next to a good certificate is still refused.
    EXPECT_EQ(CallWith(*edge, table, "not-a-token-of-anybody").error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    auto admin = stub_as("admin");
    EXPECT_TRUE(CallWith(*admin, status, "").ok()) << "the admin by certificate, no token";
    EXPECT_EQ(CallWith(*admin, table, "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    auto edge = stub_as("edge-dns");
    EXPECT_TRUE(CallWith(*edge, table, "").ok());
    EXPECT_EQ(CallWith(*edge, status, "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
    auto admin = stub_as("admin-dns");
    EXPECT_TRUE(CallWith(*admin, status, "").ok());
    EXPECT_EQ(CallWith(*admin, table, "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
    auto nobody = stub_as("nobody-dns");
    EXPECT_EQ(CallWith(*nobody, table, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallWith(*nobody, status, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    auto nobody = stub_as("nobody");  // chained to the CA, but names no known identity
    EXPECT_EQ(CallWith(*nobody, table, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(CallWith(*nobody, status, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_TRUE(CallWith(*nobody, health, "").ok()) << "health is open";
    EXPECT_TRUE(CallWith(*nobody, status, kAdminToken).ok()) << "the admin token over TLS";
  }
  for (const char* who : {"stranger", "expired"}) {  // another CA's or an expired certificate:
    grpc::SslCredentialsOptions o;                   // the handshake fails
    o.pem_root_certs = ReadText(dir + "/ca.pem");
    o.pem_cert_chain = ReadText(dir + "/" + std::string(who) + ".pem");
    o.pem_private_key = ReadText(dir + "/" + std::string(who) + ".key");
    grpc::GenericStub refused(grpc::CreateChannel(target, grpc::SslCredentials(o)));
    auto s = CallWith(refused, table, "");
    EXPECT_FALSE(s.ok()) << who;
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << who << ": " << s.error_message();
    // The edge's token does not make up for the refused certificate.
    EXPECT_FALSE(CallWith(refused, table, kEdgeToken).ok()) << who;
  }
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  std::filesystem::remove_all(dir);
}

// Certificate rotation without a restart: the server re-reads grpc.tls.* every
// grpc.tls.refresh_interval. Under load, its certificate moves to one from a new CA and its CA
// bundle to both CAs: no call on the established connection fails, and new connections see the
// new certificate and trust the new CA.
TEST_F(InternalTrustTest, RotatedCertificatesAreUsedWithoutARestartAndNoCallIsLost) {
  char tmpl[] = "/tmp/tollgate-tls-rot.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  Issue(dir, "ca", "svc", "IP:127.0.0.1,DNS:localhost");
  Issue(dir, "ca", "edge", "URI:tollgate://edge");
  Issue(dir, "ca2", "svc2", "IP:127.0.0.1,DNS:localhost");
  Issue(dir, "ca2", "edge2", "URI:tollgate://edge");
  // Replaces a file the server reads in one step, as the kubelet does with a Secret volume.
  auto put = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir + "/" + name + ".tmp") << content;
    std::filesystem::rename(dir + "/" + name + ".tmp", dir + "/" + name);
  };
  put("live.key", ReadText(dir + "/svc.key"));
  put("live.pem", ReadText(dir + "/svc.pem"));
  put("live-ca.pem", ReadText(dir + "/ca.pem"));
  auto env = Env();
  env["TOLLGATE_GRPC__TLS__CERT_FILE"] = dir + "/live.pem";
  env["TOLLGATE_GRPC__TLS__KEY_FILE"] = dir + "/live.key";
  env["TOLLGATE_GRPC__TLS__CA_FILE"] = dir + "/live-ca.pem";
  env["TOLLGATE_GRPC__TLS__REFRESH_INTERVAL"] = "1s";
  Process p({Binary(), "--target=router"}, env);
  std::map<std::string, std::string> listen;
  ASSERT_FALSE(StartAllAndCollect(p, listen).empty()) << p.RestOfOutput();
  const std::string target = listen["router"];
  auto stub_as = [&](const std::string& ca, const std::string& who) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ReadText(dir + "/" + ca + ".pem");
    o.pem_cert_chain = ReadText(dir + "/" + who + ".pem");
    o.pem_private_key = ReadText(dir + "/" + who + ".key");
    return std::make_unique<grpc::GenericStub>(
        grpc::CreateChannel(target, grpc::SslCredentials(o)));
  };
  const std::string table = "/tollgate.router.v1.RouterService/GetRoutingTable";
  auto before = stub_as("ca", "edge");
  ASSERT_TRUE(CallWith(*before, table, "").ok());
  EXPECT_FALSE(CallWith(*stub_as("ca2", "edge2"), table, "").ok()) << "not yet rotated";

  std::atomic<bool> stop{false};
  std::atomic<int> served{0}, failed{0};
  std::thread load([&] {
    while (!stop) {
      auto s = CallWith(*before, table, "");
      (s.ok() ? served : failed)++;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  put("live-ca.pem", ReadText(dir + "/ca.pem") + ReadText(dir + "/ca2.pem"));
  put("live.key", ReadText(dir + "/svc2.key"));
  put("live.pem", ReadText(dir + "/svc2.pem"));
  // Within a few refresh intervals, a client that trusts only the new CA and presents a
  // certificate from it is served.
  bool rotated = false;
  for (int i = 0; i < 50 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    rotated = CallWith(*stub_as("ca2", "edge2"), table, "").ok();
  }
  EXPECT_TRUE(rotated) << "the server did not pick up the new certificate and CA bundle";
  // The server now presents the new certificate: a new connection trusting only the old CA fails.
  EXPECT_EQ(CallWith(*stub_as("ca", "edge"), table, "").error_code(),
            grpc::StatusCode::UNAVAILABLE);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  load.join();
  EXPECT_EQ(failed.load(), 0) << "calls lost during the rotation";
  EXPECT_GT(served.load(), 10);
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  std::filesystem::remove_all(dir);
}

// The client side of rotation: the channels of a process (the edge's, MakeChannel) re-read
// grpc.tls.* too. This test process is the client; its certificate moves from the edge's (old
// CA) to the admin's (new CA), and new connections present the new one.
TEST_F(InternalTrustTest, ChannelsPresentTheRotatedCertificateOnNewConnections) {
  char tmpl[] = "/tmp/tollgate-tls-crot.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  Issue(dir, "ca", "svc", "IP:127.0.0.1,DNS:localhost");
  Issue(dir, "ca", "edge", "URI:tollgate://edge");
  Issue(dir, "ca2", "admin2", "URI:tollgate://admin");
  auto put = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir + "/" + name + ".tmp") << content;
    std::filesystem::rename(dir + "/" + name + ".tmp", dir + "/" + name);
  };
  put("both-ca.pem", ReadText(dir + "/ca.pem") + ReadText(dir + "/ca2.pem"));
  auto env = Env();
  env["TOLLGATE_GRPC__TLS__CERT_FILE"] = dir + "/svc.pem";
  env["TOLLGATE_GRPC__TLS__KEY_FILE"] = dir + "/svc.key";
  env["TOLLGATE_GRPC__TLS__CA_FILE"] = dir + "/both-ca.pem";
  Process p({Binary(), "--target=router"}, env);
  std::map<std::string, std::string> listen;
  ASSERT_FALSE(StartAllAndCollect(p, listen).empty()) << p.RestOfOutput();
  const std::string target = listen["router"];

  put("client.key", ReadText(dir + "/edge.key"));
  put("client.pem", ReadText(dir + "/edge.pem"));
  tollgate::ConfigureGrpcTls(
      {dir + "/client.pem", dir + "/client.key", dir + "/ca.pem", std::chrono::seconds(1)});
  const std::string table = "/tollgate.router.v1.RouterService/GetRoutingTable";
  const std::string status = "/tollgate.router.v1.RouterAdminService/GetStatus";
  {
    grpc::GenericStub edge(tollgate::MakeChannel(target, /*send_service_token=*/false));
    ASSERT_TRUE(CallWith(edge, table, "").ok());
    EXPECT_EQ(CallWith(edge, status, "").error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  put("client.key", ReadText(dir + "/admin2.key"));
  put("client.pem", ReadText(dir + "/admin2.pem"));
  bool rotated = false;
  for (int i = 0; i < 50 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    grpc::GenericStub fresh(tollgate::MakeChannel(target, /*send_service_token=*/false));
    rotated = CallWith(fresh, status, "").ok();
  }
  EXPECT_TRUE(rotated) << "new connections did not present the rotated certificate";
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(std::chrono::seconds(15)), 0) << p.RestOfOutput();
  std::filesystem::remove_all(dir);
}

}  // namespace
