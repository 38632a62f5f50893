// A module is one service inside a process. `tollgate --target=all` runs every
// module in one process; `--target=router` runs one. Modules only talk to each
// other over gRPC, so both shapes share one code path.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tollgate {

class Config;
class Metrics;

class Module {
 public:
  virtual ~Module() = default;
  virtual std::string name() const = 0;
  // Brings the module up (migrations, listeners). Throws on failure.
  virtual void Start() = 0;
  // Stops accepting new work and reports not-serving.
  virtual void BeginShutdown() = 0;
  // Drains in-flight work until `deadline`, then releases everything.
  virtual void Shutdown(std::chrono::system_clock::time_point deadline) = 0;
  // The bound gRPC port once started (it may have been configured as 0); 0: none.
  virtual int grpc_port() const { return 0; }
};

struct ModuleDeps {
  const Config& config;
  Metrics& metrics;
};

using ModuleFactory = std::function<std::unique_ptr<Module>(const ModuleDeps&)>;

}  // namespace tollgate
