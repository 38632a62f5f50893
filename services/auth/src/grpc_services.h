// The auth service's gRPC surface: AuthService (the edges' data path, answered from the key
// cache in the reactor, plus the WatchKeys push stream) and AuthAdminService (operators;
// database work on the worker pool).
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "tollgate/auth/admin.h"
#include "tollgate/auth/key_cache.h"
#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/worker_pool.h"

namespace prometheus {
class Registry;
}

namespace tollgate::auth {

// Every WatchKeys stream of this server: fed by the key cache, given a heartbeat, closed at
// shutdown.
class WatchHub {
 public:
  virtual ~WatchHub() = default;
  // Ends every stream (UNAVAILABLE) and refuses new ones, so shutdown need not wait for them.
  virtual void CloseAll() = 0;
  virtual size_t streams() const = 0;
};

struct AuthServiceDeps {
  KeyCache& cache;
  const Authenticator& authenticator;
  LastUsedRecorder& recorder;
  const Clock& clock;
  std::chrono::milliseconds heartbeat{5000};  // an empty message on an idle stream
  prometheus::Registry* registry = nullptr;
};

struct AuthService {
  std::unique_ptr<WatchHub> hub;  // outlives the service, which refers to it
  std::unique_ptr<grpc::Service> service;
};

AuthService MakeAuthService(AuthServiceDeps deps);

struct AdminServiceDeps {
  // Fills GetStatus.
  std::function<void(v1::GetStatusResponse*)> status;
  AuthAdmin& admin;
  WorkerPool& workers;
};

std::unique_ptr<grpc::Service> MakeAuthAdminService(AdminServiceDeps deps);

}  // namespace tollgate::auth
