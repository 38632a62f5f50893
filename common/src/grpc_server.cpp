#include "tollgate/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/crypto.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

#include "tollgate/log.h"

namespace tollgate {

namespace {

struct TlsMaterial {
  bool enabled = false;
  std::string cert, key, ca;
};

TlsMaterial& Tls() {
  static TlsMaterial tls;
  return tls;
}

std::string ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error(std::string("cannot read the gRPC TLS ") + what + " '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void ConfigureGrpcTls(const GrpcTlsFiles& files) {
  int given = !files.cert_file.empty() + !files.key_file.empty() + !files.ca_file.empty();
  if (given == 0) return;
  if (given != 3)
    throw std::runtime_error(
        "grpc.tls needs cert_file, key_file and ca_file together (or none of them)");
  TlsMaterial& tls = Tls();
  tls.cert = ReadPem(files.cert_file, "certificate");
  tls.key = ReadPem(files.key_file, "key");
  tls.ca = ReadPem(files.ca_file, "CA bundle");
  tls.enabled = true;
}

std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials() {
  const TlsMaterial& tls = Tls();
  if (!tls.enabled) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca;
  options.pem_cert_chain = tls.cert;
  options.pem_private_key = tls.key;
  return grpc::SslCredentials(options);
}

namespace {

std::shared_ptr<grpc::ServerCredentials> ServerCredentials() {
  const TlsMaterial& tls = Tls();
  if (!tls.enabled) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = tls.ca;
  options.pem_key_cert_pairs.push_back({tls.key, tls.cert});
  return grpc::SslServerCredentials(options);
}

}  // namespace

GrpcServer::GrpcServer(std::string listen) : listen_(std::move(listen)) {}

GrpcServer::~GrpcServer() {
  if (server_) Shutdown(std::chrono::system_clock::now());
}

void GrpcServer::Register(grpc::Service* service, std::string full_name) {
  services_.push_back(service);
  if (!full_name.empty()) names_.push_back(std::move(full_name));
}

void GrpcServer::Start() {
  static const bool kGlobalsSet = [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    return true;
  }();
  (void)kGlobalsSet;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen_, ServerCredentials(), &port_);
  builder.SetMaxReceiveMessageSize(16 * 1024 * 1024);
  for (auto* s : services_) builder.RegisterService(s);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    throw std::runtime_error("cannot listen for gRPC on " + listen_);
  }
  auto colon = listen_.rfind(':');
  listen_ = listen_.substr(0, colon) + ":" + std::to_string(port_);
}

void GrpcServer::SetServing(bool serving) {
  if (!server_) return;
  auto* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  for (const auto& name : names_) health->SetServingStatus(name, serving);
  health->SetServingStatus(serving);
}

void GrpcServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (!server_) return;
  SetServing(false);
  server_->Shutdown(deadline);  // stops accepting; cancels what is left at the deadline
  server_->Wait();
  server_.reset();
}

grpc::Status CheckAdminToken(const grpc::ServerContextBase& context,
                             const std::string& admin_token) {
  if (admin_token.empty())
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "admin RPCs are disabled: no admin token is configured");
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  static constexpr std::string_view kBearer = "Bearer ";
  if (it == md.end()) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing admin token");
  std::string_view value(it->second.data(), it->second.size());
  if (value.substr(0, kBearer.size()) == kBearer) value.remove_prefix(kBearer.size());
  bool ok = value.size() == admin_token.size() &&
            CRYPTO_memcmp(value.data(), admin_token.data(), value.size()) == 0;
  if (!ok) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid admin token");
  return grpc::Status::OK;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetMaxReceiveMessageSize(16 * 1024 * 1024);
  // gRPC's reconnect backoff grows to 120 s by default: after a long outage of a service the
  // edge would keep failing for a long while after it is back. Peers here are a hop away.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(target, GrpcChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace tollgate
