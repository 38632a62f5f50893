// The shape shared by the four database-owning services (auth, quota, router,
// billing): a PostgreSQL pool on the service's own database, migrations applied
// at start-up, a gRPC server with health and reflection, a worker pool for SQL.
#pragma once

#include "tollgate/grpc_server.h"
#include "tollgate/migration.h"
#include "tollgate/module.h"
#include "tollgate/worker_pool.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace tollgate {

class PgPool;  // tollgate/pg.h, included only by the .cpp files that use the pool

class DbServiceModule : public Module {
 public:
  DbServiceModule(std::string name, const ModuleDeps& deps,
                  const std::vector<Migration>& migrations);
  ~DbServiceModule() override;

  std::string name() const override { return name_; }
  void Start() override;
  void BeginShutdown() override;
  void Shutdown(std::chrono::system_clock::time_point deadline) override;

  int grpc_port() const { return server_ ? server_->port() : 0; }
  int64_t schema_version() const { return schema_version_; }
  const std::string& database_name() const { return database_; }
  const std::string& admin_token() const { return admin_token_; }

 protected:
  // Builds the service objects (they may use pool(), workers(), config())
  // and registers them on `server`.
  virtual void RegisterServices(GrpcServer& server) = 0;
  // Called after the server stopped, before the pool closes.
  virtual void OnStopped() {}

  PgPool& pool() { return *pool_; }
  WorkerPool& workers() { return *workers_; }
  const Config& config() const { return deps_.config; }
  Metrics& metrics() { return deps_.metrics; }

 private:
  std::string name_;
  ModuleDeps deps_;
  const std::vector<Migration>& migrations_;
  std::string admin_token_;
  std::string database_;
  std::atomic<int64_t> schema_version_{0};
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<GrpcServer> server_;
};

const char* BuildVersion();

// Fills a GetStatusResponse-shaped message (same fields in every package).
template <typename Response>
void FillStatus(const DbServiceModule& module, Response* response) {
  response->set_version(BuildVersion());
  response->set_schema_version(module.schema_version());
  response->set_database(module.database_name());
}

}  // namespace tollgate
