#include "tollgate/db_service.h"

#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <thread>

#include "tollgate/config.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"
#include "tollgate/stop.h"

#ifndef TOLLGATE_VERSION
#define TOLLGATE_VERSION "dev"
#endif

namespace tollgate {
namespace {

// "dbname=x" or ".../x" in a DSN, for status and logs (never the whole DSN).
std::string DatabaseName(const std::string& dsn) {
  auto pos = dsn.find("dbname=");
  if (pos != std::string::npos) {
    auto end = dsn.find_first_of(" \t", pos);
    return dsn.substr(pos + 7, end == std::string::npos ? std::string::npos : end - pos - 7);
  }
  auto slash = dsn.rfind('/');
  if (dsn.rfind("postgres", 0) == 0 && slash != std::string::npos) {
    auto q = dsn.find('?', slash);
    return dsn.substr(slash + 1, q == std::string::npos ? std::string::npos : q - slash - 1);
  }
  return "";
}

// Refuses a gRPC listener anyone on the network can reach with no credential needed: a non-loopback
// address with neither mutual TLS nor a configured service token, unless grpc.allow_insecure
// says the network itself is trusted (then loudly, and in /metrics).
void CheckExposure(const std::string& service, const std::string& listen, const Config& c,
                   Metrics& metrics) {
  const bool exposed = !IsLoopbackListen(listen) && !GrpcTlsEnabled() && !ServiceTokenConfigured();
  const bool insecure = exposed && c.GetBool("grpc.allow_insecure");
  prometheus::BuildGauge()
      .Name("tollgate_grpc_insecure")
      .Help(
          "1 when this service's gRPC listener is reachable beyond loopback with neither mutual "
          "TLS nor a service token (grpc.allow_insecure)")
      .Register(metrics.registry())
      .Add({{"service", service}})
      .Set(insecure ? 1 : 0);
  if (exposed && !insecure)
    throw std::runtime_error(
        service + ".grpc_listen " + listen +
        " is not a loopback address, and neither mutual TLS (grpc.tls.*) nor a service token "
        "(grpc.service_tokens.edge) is configured: anyone who can reach the port could call "
        "every RPC. Configure one of them, or set grpc.allow_insecure: true if the network "
        "authenticates callers itself (a service mesh with mTLS)");
  if (insecure)
    log::Warn(service,
              "INSECURE: gRPC listens beyond loopback with no mutual TLS and no service token "
              "(grpc.allow_insecure): any caller that reaches the port is treated as the edge",
              {{"listen", listen}});
}

}  // namespace

const char* BuildVersion() { return TOLLGATE_VERSION; }

DbServiceModule::DbServiceModule(std::string name, const ModuleDeps& deps,
                                 const std::vector<Migration>& migrations)
    : name_(std::move(name)), deps_(deps), migrations_(migrations) {}

DbServiceModule::~DbServiceModule() = default;

void DbServiceModule::Start() {
  const Config& c = deps_.config;
  const std::string prefix = name_ + ".database.";
  // Before the database is touched, so an exposed listener fails fast.
  CheckExposure(name_, c.GetString(name_ + ".grpc_listen"), c, deps_.metrics);
  PgPoolOptions options;
  options.dsn = c.GetString(prefix + "dsn");
  options.size = static_cast<int>(c.GetInt(prefix + "pool_size"));
  options.acquire_timeout = c.GetDuration(prefix + "acquire_timeout");
  options.name = name_;
  database_ = DatabaseName(options.dsn);
  admin_token_ = c.GetString("admin.token");
  pool_ = std::make_unique<PgPool>(options, &deps_.metrics.registry());

  // The database may still be starting (compose, a fresh pod): retry until the connect timeout.
  auto give_up = std::chrono::steady_clock::now() + c.GetDuration(prefix + "connect_timeout");
  for (int attempt = 1;; ++attempt) {
    try {
      auto result =
          pool_->Run([&](pqxx::connection& conn) { return Migrate(conn, name_, migrations_); });
      schema_version_ = result.schema_version;
      log::Info(name_, "database ready",
                {{"database", database_},
                 {"schema_version", result.schema_version},
                 {"applied", result.applied}});
      break;
    } catch (const pqxx::broken_connection& e) {
      if (StopRequested()) throw StopRequestedError();
      if (std::chrono::steady_clock::now() >= give_up)
        throw std::runtime_error("cannot connect to the " + name_ + " database '" + database_ +
                                 "': " + log::Redact(e.what()));
      if (attempt == 1) log::Warn(name_, "waiting for the database", {{"database", database_}});
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }

  workers_ = std::make_unique<WorkerPool>(static_cast<int>(c.GetInt(name_ + ".workers")),
                                          static_cast<size_t>(c.GetInt(name_ + ".worker_queue")),
                                          &deps_.metrics.registry(), name_);
  server_ =
      std::make_unique<GrpcServer>(c.GetString(name_ + ".grpc_listen"),
                                   GrpcServerAuth{admin_token_, c.GetString("admin.token_rotation"),
                                                  c.GetBool("grpc.allow_insecure")});
  RegisterServices(*server_);
  server_->Start();
  server_->SetServing(true);
  log::Info(name_, "serving gRPC", {{"listen", server_->listen()}});
}

void DbServiceModule::BeginShutdown() {
  if (server_) server_->SetServing(false);
}

void DbServiceModule::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (server_) server_->Shutdown(deadline);
  server_.reset();
  OnStopped();
  if (workers_) workers_->Stop();
  workers_.reset();
  pool_.reset();
}

}  // namespace tollgate
