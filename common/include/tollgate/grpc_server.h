// gRPC server bootstrap shared by every service: one listening address, the
// standard health service and server reflection, internal authentication and
// authorisation of every call (internal_auth.h) before any handler runs, and a
// graceful shutdown that stops accepting, then drains in-flight calls up to a
// deadline.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace tollgate {

// Who this server accepts, besides certificates (grpc.tls.*) and the process's service token
// (ConfigureServiceToken).
struct GrpcServerAuth {
  std::string admin_token;           // admin.token; empty: the admin identity only by certificate
  std::string admin_token_rotation;  // admin.token_rotation: also accepted, during a rotation
  bool allow_insecure =
      false;  // grpc.allow_insecure: a call without credentials counts as the edge
};

class GrpcServer final {
 public:
  explicit GrpcServer(std::string listen, GrpcServerAuth auth = {});
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
  GrpcServerAuth auth_;
  std::vector<grpc::Service*> services_;
  std::vector<std::string> names_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The edge's service token (grpc.service_tokens.edge): sent by every channel of MakeChannel as
// "authorization: Bearer <token>" and accepted by every server of this process as the edge.
// Process-wide, set once at start-up before any server or channel. Not configured: a random token
// made for this process alone, so `--target=all` is authenticated with no configuration while
// other processes can never present it. `rotation` (grpc.service_tokens.edge_rotation) is a second
// token the servers accept but no channel sends, so tokens rotate in three rollouts without a
// refusal: add the new one as `rotation`, swap the two, clear `rotation`. Throws
// std::runtime_error if either is set and shorter than 16 characters.
void ConfigureServiceToken(const std::string& edge_token, const std::string& rotation = {});
bool ServiceTokenConfigured();
// At least 16 characters: refuses tokens too short to be secret.
constexpr size_t kMinServiceTokenLength = 16;

// Mutual TLS between services: PEM files. All empty: plaintext (loopback, a
// trusted pod network or a service mesh). All three set: every server requires
// and verifies a client certificate signed by `ca_file`, every channel
// presents `cert_file` and verifies the server against `ca_file`. The files are re-read every
// `refresh_interval`: new handshakes use the new certificate, key and CA bundle, established
// connections and their calls are not touched (rotation without a restart).
struct GrpcTlsFiles {
  std::string cert_file;
  std::string key_file;
  std::string ca_file;
  std::chrono::seconds refresh_interval{60};
  bool enabled() const { return !cert_file.empty(); }
};

// Process-wide, set once at start-up (from `grpc.tls.*`) before any server or channel.
// Throws std::runtime_error if only some files are given or one cannot be read.
void ConfigureGrpcTls(const GrpcTlsFiles& files);
std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials();

bool GrpcTlsEnabled();

// A client channel with keep-alive; every call made on it must still set a deadline. With
// `send_service_token`, every call carries this process's service token (the edge identity);
// a probe (`tollgate health`) sends none: health is open to anyone.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target,
                                           bool send_service_token = true);

// True for 127.0.0.0/8, ::1 and localhost listening addresses ("host:port").
bool IsLoopbackListen(const std::string& listen);

// Sets a deadline `timeout` from now on `context`.
void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout);

}  // namespace tollgate
