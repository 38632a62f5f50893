// tollgate: one binary for every service.
//   tollgate [serve] [--config=FILE] [--target=all|edge,auth,quota,router,billing]
//   tollgate migrate [--config=FILE] [--target=...]   apply migrations and exit
//   tollgate health HOST:PORT [SERVICE]                gRPC health probe (exit 0 when SERVING)
//   tollgate check-config [--config=FILE]              validate configuration and exit
//   tollgate config-keys                               list every configuration key (Markdown)
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tollgate/auth/module.h"
#include "tollgate/billing/module.h"
#include "tollgate/config.h"
#include "tollgate/edge/module.h"
#include "tollgate/grpc_server.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"
#include "tollgate/quota/module.h"
#include "tollgate/router/module.h"
#include "tollgate/stop.h"

namespace {

using tollgate::Config;
using tollgate::Module;
using tollgate::ModuleDeps;

// Start order: the services the edge calls come up first; shutdown is the reverse.
const std::vector<std::pair<std::string, tollgate::ModuleFactory>>& Modules() {
  static const std::vector<std::pair<std::string, tollgate::ModuleFactory>> kModules = {
      {"auth", tollgate::auth::MakeAuthModule},
      {"quota", tollgate::quota::MakeQuotaModule},
      {"router", tollgate::router::MakeRouterModule},
      {"billing", tollgate::billing::MakeBillingModule},
      {"edge", tollgate::edge::MakeEdgeModule},
  };
  return kModules;
}

const std::map<std::string, const std::vector<tollgate::Migration>& (*)()>& MigrationSets() {
  static const std::map<std::string, const std::vector<tollgate::Migration>& (*)()> kSets = {
      {"auth", tollgate::auth::Migrations},
      {"quota", tollgate::quota::Migrations},
      {"router", tollgate::router::Migrations},
      {"billing", tollgate::billing::Migrations}};
  return kSets;
}

struct Args {
  std::string command = "serve";
  std::string config_path;
  std::set<std::string> targets;
  std::vector<std::string> positional;
};

[[noreturn]] void Usage(const std::string& error) {
  std::cerr
      << "tollgate: " << error << "\n"
      << "usage: tollgate [serve|migrate|check-config|config-keys] [--config=FILE] [--target=all|"
         "edge,auth,quota,router,billing]\n"
      << "       tollgate health HOST:PORT [SERVICE]\n";
  std::exit(2);
}

Args ParseArgs(int argc, char** argv) {
  Args args;
  if (const char* env = std::getenv("TOLLGATE_CONFIG")) args.config_path = env;
  std::string target = "all";
  int i = 1;
  if (i < argc && argv[i][0] != '-') args.command = argv[i++];
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--config=", 0) == 0)
      args.config_path = a.substr(9);
    else if (a.rfind("--target=", 0) == 0)
      target = a.substr(9);
    else if (a == "--help" || a == "-h")
      Usage("help");
    else if (a[0] == '-')
      Usage("unknown flag " + a);
    else
      args.positional.push_back(a);
  }
  std::stringstream ss(target);
  for (std::string t; std::getline(ss, t, ',');) {
    if (t == "all") {
      for (const auto& [name, f] : Modules()) args.targets.insert(name);
      continue;
    }
    bool known = false;
    for (const auto& [name, f] : Modules()) known |= name == t;
    if (!known) Usage("unknown target '" + t + "'");
    args.targets.insert(t);
  }
  return args;
}

int Health(const Args& args) {
  if (args.positional.empty()) Usage("health needs HOST:PORT");
  // Health is open to anyone: the probe sends no token to whatever address it was given.
  auto stub = grpc::health::v1::Health::NewStub(
      tollgate::MakeChannel(args.positional[0], /*send_service_token=*/false));
  grpc::ClientContext ctx;
  tollgate::SetDeadline(ctx, std::chrono::seconds(3));
  grpc::health::v1::HealthCheckRequest req;
  if (args.positional.size() > 1) req.set_service(args.positional[1]);
  grpc::health::v1::HealthCheckResponse resp;
  auto status = stub->Check(&ctx, req, &resp);
  if (!status.ok()) {
    std::cout << "UNREACHABLE: " << status.error_message() << "\n";
    return 1;
  }
  std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()) << "\n";
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

int Migrate(const Args& args, const Config& config) {
  for (const auto& [name, migrations] : MigrationSets()) {
    if (!args.targets.count(name)) continue;
    pqxx::connection conn(config.GetString(name + ".database.dsn"));
    auto result = tollgate::Migrate(conn, name, migrations());
    std::cout << name << ": schema version " << result.schema_version << " (" << result.applied
              << " applied)\n";
  }
  return 0;
}

// Every configuration key as a Markdown table (docs/configuration.md is this output).
int ConfigKeys() {
  std::cout << "| key | environment variable | default | |\n|---|---|---|---|\n";
  for (const auto& k : tollgate::ConfigSchema()) {
    std::string def = k.secret ? "(secret: env or `" + k.key + "_file` only)" : k.default_value;
    std::cout << "| `" << k.key << "` | `" << Config::EnvName(k.key) << "` | "
              << (def.empty() ? "" : "`" + def + "`") << " | " << k.help << " |\n";
  }
  return 0;
}

int Serve(const Args& args, const Config& loaded) {
  // Mutable: in-process services may bind port 0, and the edge must call their actual ports.
  Config config = loaded;
  // Block the shutdown signals in every thread; main waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A dedicated thread takes the signal, so SIGTERM is honoured during start-up too.
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  int sig = 0;
  std::thread signal_thread([&] {
    int got = 0;
    sigwait(&signals, &got);
    std::lock_guard lock(stop_mu);
    sig = got;
    tollgate::RequestStop();
    stop_cv.notify_all();
  });
  signal_thread.detach();

  tollgate::Metrics metrics(config.GetString("metrics.listen"));
  ModuleDeps deps{config, metrics};
  std::vector<std::unique_ptr<Module>> running;
  auto stop_all = [&](std::chrono::milliseconds drain) {
    for (auto it = running.rbegin(); it != running.rend(); ++it) (*it)->BeginShutdown();
    auto deadline = std::chrono::system_clock::now() + drain;
    for (auto it = running.rbegin(); it != running.rend(); ++it) (*it)->Shutdown(deadline);
    running.clear();
  };
  try {
    for (const auto& [name, factory] : Modules()) {
      if (!args.targets.count(name)) continue;
      auto module = factory(deps);
      module->Start();
      if (int port = module->grpc_port(); port > 0 && args.targets.count("edge")) {
        std::string host = config.GetString(name + ".grpc_listen");
        host = host.substr(0, host.rfind(':'));
        if (host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
        config.Set(name == "quota" ? "edge.quota_targets" : "edge." + name + "_target",
                   host + ":" + std::to_string(port));
      }
      running.push_back(std::move(module));
    }
  } catch (const tollgate::StopRequestedError&) {
    tollgate::log::Info("main", "stopped during start-up");
    stop_all(std::chrono::milliseconds(0));
    return 0;
  } catch (const std::exception& e) {
    tollgate::log::Error("main", "start-up failed", {{"error", tollgate::log::Redact(e.what())}});
    stop_all(std::chrono::milliseconds(0));
    return 1;
  }
  std::string names;
  for (const auto& m : running) names += (names.empty() ? "" : ",") + m->name();
  tollgate::log::Info("main", "tollgate started",
                      {{"targets", names}, {"metrics_port", metrics.port()}});

  {
    std::unique_lock lock(stop_mu);
    stop_cv.wait(lock, [] { return tollgate::StopRequested(); });
  }
  auto drain = config.GetDuration("shutdown.drain_timeout");
  tollgate::log::Info(
      "main", "shutting down",
      {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"drain_timeout_ms", drain.count()}});
  stop_all(drain);
  tollgate::log::Info("main", "stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Debian's Abseil tracks lock ordering in every absl::Mutex (gRPC's) for deadlock reports: a
  // graph update per lock, several percent of the CPU under load. Not for production.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Args args = ParseArgs(argc, argv);
  if (args.command == "config-keys") return ConfigKeys();
  Config config;
  try {
    config = Config::Load(args.config_path, Config::ProcessEnvironment());
    tollgate::edge::CheckEdgeConfig(config);
  } catch (const tollgate::ConfigError& e) {
    std::cerr << "tollgate: configuration error: " << e.what() << "\n";
    return 2;
  }
  tollgate::log::SetLevel(tollgate::log::ParseLevel(config.GetString("log.level")));
  try {
    tollgate::ConfigureGrpcTls({config.GetString("grpc.tls.cert_file"),
                                config.GetString("grpc.tls.key_file"),
                                config.GetString("grpc.tls.ca_file"),
                                std::chrono::duration_cast<std::chrono::seconds>(
                                    config.GetDuration("grpc.tls.refresh_interval"))});
    const std::string& edge_token = config.GetString("grpc.service_tokens.edge");
    const std::string& edge_rotation = config.GetString("grpc.service_tokens.edge_rotation");
    for (const std::string* edge : {&edge_token, &edge_rotation})
      for (const char* admin : {"admin.token", "admin.token_rotation"})
        if (!edge->empty() && *edge == config.GetString(admin))
          throw std::runtime_error(
              "an edge token (grpc.service_tokens.edge*) equals an admin token (" +
              std::string(admin) + "): give each identity its own token");
    tollgate::ConfigureServiceToken(edge_token, edge_rotation);
  } catch (const std::exception& e) {
    std::cerr << "tollgate: configuration error: " << e.what() << "\n";
    return 2;
  }
  // After TLS: the probe speaks to servers as the services do.
  if (args.command == "health") return Health(args);
  try {
    if (args.command == "serve") return Serve(args, config);
    if (args.command == "migrate") return Migrate(args, config);
    if (args.command == "check-config") {
      std::cout << "configuration OK\n";
      return 0;
    }
  } catch (const std::exception& e) {
    tollgate::log::Error("main", args.command + " failed",
                         {{"error", tollgate::log::Redact(e.what())}});
    return 1;
  }
  Usage("unknown command '" + args.command + "'");
}
