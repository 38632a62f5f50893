// gRPC server bootstrap shared by every service: one listening address, the
// standard health service and server reflection, and a graceful shutdown
// that stops accepting, then drains in-flight calls up to a deadline.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace tollgate {

class GrpcServer final {
 public:
  explicit GrpcServer(std::string listen);
  ~GrpcServer();

  // Services must outlive the server. Call before Start(). A service given its
  // full name (e.g. pb::RouterService::service_full_name()) gets its own health status.
  void Register(grpc::Service* service, std::string full_name = {});
  // Binds and starts serving; throws std::runtime_error if the address cannot be bound.
  void Start();
  int port() const { return port_; }
  const std::string& listen() const { return listen_; }
  // Health status of every registered service and of the server as a whole ("").
  void SetServing(bool serving);
  void Shutdown(std::chrono::system_clock::time_point deadline);

 private:
  std::string listen_;
  std::vector<grpc::Service*> services_;
  std::vector<std::string> names_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Constant-time check of the "authorization: Bearer <admin token>" metadata.
// An empty configured token refuses every admin call.
grpc::Status CheckAdminToken(const grpc::ServerContextBase& context,
                             const std::string& admin_token);

// Mutual TLS between services: PEM files. All empty: plaintext (loopback, a
// trusted pod network or a service mesh). All three set: every server requires
// and verifies a client certificate signed by `ca_file`, every channel
// presents `cert_file` and verifies the server against `ca_file`.
struct GrpcTlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  bool enabled() const { return !cert_file.empty(); }
};

// Process-wide, set once at start-up (from `grpc.tls.*`) before any server or channel.
// Throws std::runtime_error if only some files are given or one cannot be read.
void ConfigureGrpcTls(const GrpcTlsFiles& files);
std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials();

// A client channel with keep-alive; every call made on it must still set a deadline.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// Sets a deadline `timeout` from now on `context`.
void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout);

}  // namespace tollgate
