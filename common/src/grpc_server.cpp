#include "tollgate/grpc_server.h"

#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <grpcpp/support/client_interceptor.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "tollgate/encoding.h"
#include "tollgate/internal_auth.h"
#include "tollgate/log.h"

namespace tollgate {

namespace {

struct TlsMaterial {
  bool enabled = false;
  GrpcTlsFiles files;
  // The channels' view of the files, shared by every channel of the process (one watcher
  // thread), made by the first channel: after Serve has blocked SIGTERM, which a thread started
  // earlier would receive and die of.
  std::once_flag channel_provider_once;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> channel_provider;
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
  // Read once here so that a missing or unreadable file stops the start with its name; from then
  // on gRPC's file watchers re-read them every refresh_interval.
  ReadPem(files.cert_file, "certificate");
  ReadPem(files.key_file, "key");
  ReadPem(files.ca_file, "CA bundle");
  if (files.refresh_interval < std::chrono::seconds(1))
    throw std::runtime_error("grpc.tls.refresh_interval must be at least 1s");
  TlsMaterial& tls = Tls();
  tls.files = files;
  tls.enabled = true;
}

std::shared_ptr<grpc::ChannelCredentials> GrpcChannelCredentials() {
  TlsMaterial& tls = Tls();
  if (!tls.enabled) return grpc::InsecureChannelCredentials();
  std::call_once(tls.channel_provider_once, [&tls] {
    tls.channel_provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        tls.files.key_file, tls.files.cert_file, tls.files.ca_file,
        static_cast<unsigned>(tls.files.refresh_interval.count()));
  });
  // Verifies the server's certificate against the CA bundle and the target's host name (gRPC's
  // default verifier for TLS channel credentials), presents this process's certificate.
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(tls.channel_provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

bool GrpcTlsEnabled() { return Tls().enabled; }

namespace {

struct ServiceToken {
  std::string edge;
  std::string edge_rotation;  // accepted, never sent
  bool configured = false;
};

// A random token for this process alone until one is configured (see ConfigureServiceToken).
ServiceToken& Token() {
  static ServiceToken token = [] {
    unsigned char bytes[32];
    if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("RAND_bytes failed");
    ServiceToken t;
    t.edge = HexEncode(std::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
    OPENSSL_cleanse(bytes, sizeof bytes);
    return t;
  }();
  return token;
}

bool SecretEquals(std::string_view a, std::string_view b) {
  return !b.empty() && a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view View(const grpc_slice& slice) {
  return {reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(slice)), GRPC_SLICE_LENGTH(slice)};
}

// The check every call passes before it reaches a handler: gRPC core runs it on the call's
// initial metadata (":path" included), and a status other than OK ends the call with it.
class CallAuthenticator final {
 public:
  CallAuthenticator(GrpcServerAuth auth, ServiceToken edge)
      : auth_(std::move(auth)), edge_(std::move(edge)) {}

  static void Process(void* state, grpc_auth_context* context, const grpc_metadata* md,
                      size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
    static_cast<CallAuthenticator*>(state)->Run(context, md, num_md, done, user_data);
  }
  static void Destroy(void* state) { delete static_cast<CallAuthenticator*>(state); }

 private:
  void Run(grpc_auth_context* context, const grpc_metadata* md, size_t num_md,
           grpc_process_auth_metadata_done_cb done, void* user_data) const {
    std::string_view method;
    IdentitySet callers;
    bool presented = false, invalid = false;
    const grpc_metadata* consumed[4];
    size_t num_consumed = 0;
    for (size_t i = 0; i < num_md; ++i) {
      std::string_view key = View(md[i].key);
      if (key == ":path") {
        method = View(md[i].value);
      } else if (key == "authorization") {
        presented = true;
        std::string_view value = View(md[i].value);
        static constexpr std::string_view kBearer = "Bearer ";
        if (value.substr(0, kBearer.size()) == kBearer) value.remove_prefix(kBearer.size());
        if (SecretEquals(value, edge_.edge) || SecretEquals(value, edge_.edge_rotation))
          callers.Add(Identity::kEdge);
        else if (SecretEquals(value, auth_.admin_token) ||
                 SecretEquals(value, auth_.admin_token_rotation))
          callers.Add(Identity::kAdmin);
        else
          invalid = true;
        // Handlers never see a token.
        if (num_consumed < std::size(consumed)) consumed[num_consumed++] = &md[i];
      }
    }
    // A certificate the server verified (mutual TLS) names its identity in a URI SAN
    // (tollgate://edge) or a DNS SAN (edge.tollgate.internal).
    for (const char* property :
         {GRPC_PEER_URI_PROPERTY_NAME, GRPC_PEER_DNS_PROPERTY_NAME, GRPC_X509_SAN_PROPERTY_NAME}) {
      if (context == nullptr) break;
      auto it = grpc_auth_context_find_properties_by_name(context, property);
      while (const grpc_auth_property* p = grpc_auth_property_iterator_next(&it)) {
        presented = true;
        if (auto id = IdentityFromSan({p->value, p->value_length})) callers.Add(*id);
      }
    }
    grpc_metadata consumed_md[std::size(consumed)];
    for (size_t i = 0; i < num_consumed; ++i) consumed_md[i] = *consumed[i];

    grpc_status_code code = GRPC_STATUS_OK;
    const char* message = nullptr;
    if (invalid) {
      code = GRPC_STATUS_UNAUTHENTICATED;
      message = "invalid service or admin token";
    } else {
      // allow_insecure: the network is trusted (a mesh doing mTLS): no credential is the edge.
      if (!presented && auth_.allow_insecure) callers.Add(Identity::kEdge);
      switch (Authorize(method, callers)) {
        case Verdict::kAllow:
          break;
        case Verdict::kUnauthenticated:
          code = GRPC_STATUS_UNAUTHENTICATED;
          message =
              "this method needs a caller identity: a service or admin token, or a "
              "client certificate naming one";
          break;
        case Verdict::kPermissionDenied:
          code = GRPC_STATUS_PERMISSION_DENIED;
          message = "the caller's identity may not call this method";
          break;
      }
    }
    done(user_data, consumed_md, code == GRPC_STATUS_OK ? num_consumed : 0, nullptr, 0, code,
         message);
  }

  const GrpcServerAuth auth_;
  const ServiceToken edge_;
};

// Plaintext or mutual TLS (grpc.tls.*), with the CallAuthenticator on every call either way.
// Built on gRPC core's credentials: the C++ InsecureServerCredentials of gRPC 1.51 cannot carry
// an auth metadata processor.
class InternalServerCredentials final : public grpc::ServerCredentials {
 public:
  explicit InternalServerCredentials(GrpcServerAuth auth) : auth_(std::move(auth)) {}
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {
    throw std::logic_error("InternalServerCredentials has its own metadata processor");
  }

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    const TlsMaterial& tls = Tls();
    grpc_server_credentials* creds = nullptr;
    if (tls.enabled) {
      // gRPC core's TLS credentials with a file watcher (not the SSL credentials, which take the
      // PEM bytes once): certificate rotation without a restart, and still core credentials, so
      // the CallAuthenticator below is installed the same way.
      grpc_tls_certificate_provider* provider = grpc_tls_certificate_provider_file_watcher_create(
          tls.files.key_file.c_str(), tls.files.cert_file.c_str(), tls.files.ca_file.c_str(),
          static_cast<unsigned>(tls.files.refresh_interval.count()));
      grpc_tls_credentials_options* options = grpc_tls_credentials_options_create();
      grpc_tls_credentials_options_set_certificate_provider(options, provider);  // takes a ref
      grpc_tls_certificate_provider_release(provider);
      grpc_tls_credentials_options_watch_root_certs(options);
      grpc_tls_credentials_options_watch_identity_key_cert_pairs(options);
      grpc_tls_credentials_options_set_cert_request_type(
          options, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
      creds = grpc_tls_server_credentials_create(options);  // takes the options
      if (creds == nullptr) throw std::runtime_error("cannot create the gRPC TLS credentials");
    } else {
      creds = grpc_insecure_server_credentials_create();
    }
    grpc_server_credentials_set_auth_metadata_processor(
        creds, {CallAuthenticator::Process, CallAuthenticator::Destroy,
                new CallAuthenticator(auth_, Token())});
    int port = grpc_server_add_http2_port(server, addr.c_str(), creds);
    grpc_server_credentials_release(creds);
    return port;
  }

  const GrpcServerAuth auth_;
};

// Adds "authorization: Bearer <service token>" to calls that carry no authorization of their own.
class ServiceTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit ServiceTokenInterceptor(const std::string& header) : header_(header) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      auto* md = methods->GetSendInitialMetadata();
      if (md->find("authorization") == md->end()) md->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  const std::string& header_;
};

class ServiceTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit ServiceTokenInterceptorFactory(std::string header) : header_(std::move(header)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new ServiceTokenInterceptor(header_);
  }

 private:
  const std::string header_;
};

}  // namespace

void ConfigureServiceToken(const std::string& edge_token, const std::string& rotation) {
  for (auto [key, value] : {std::pair{"grpc.service_tokens.edge", &edge_token},
                            std::pair{"grpc.service_tokens.edge_rotation", &rotation}})
    if (!value->empty() && value->size() < kMinServiceTokenLength)
      throw std::runtime_error(std::string(key) + " is shorter than " +
                               std::to_string(kMinServiceTokenLength) +
                               " characters; generate one with `openssl rand -hex 32`");
  if (!rotation.empty() && edge_token.empty())
    throw std::runtime_error(
        "grpc.service_tokens.edge_rotation is set without grpc.service_tokens.edge");
  Token().edge_rotation = rotation;
  if (edge_token.empty()) return;
  Token().edge = edge_token;
  Token().configured = true;
}

bool ServiceTokenConfigured() { return Token().configured; }

bool IsLoopbackListen(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

GrpcServer::GrpcServer(std::string listen, GrpcServerAuth auth)
    : listen_(std::move(listen)), auth_(std::move(auth)) {}

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
  builder.AddListeningPort(listen_, std::make_shared<InternalServerCredentials>(auth_), &port_);
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

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, bool send_service_token) {
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
  if (!send_service_token) return grpc::CreateCustomChannel(target, GrpcChannelCredentials(), args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(
      std::make_unique<ServiceTokenInterceptorFactory>("Bearer " + Token().edge));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, GrpcChannelCredentials(),
                                                                 args, std::move(interceptors));
}

void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace tollgate
