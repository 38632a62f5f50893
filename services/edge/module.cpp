// Wires the edge: the OpenAI-compatible HTTP surface.
#include "tollgate/edge/module.h"

#include "src/http_server.h"
#include "tollgate/config.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"

namespace tollgate::edge {
namespace {

class EdgeModule final : public Module {
 public:
  explicit EdgeModule(const ModuleDeps& deps) : deps_(deps) {}

  std::string name() const override { return "edge"; }

  void Start() override {
    HttpServerOptions options;
    options.listen = deps_.config.GetString("edge.listen");
    options.threads = static_cast<int>(deps_.config.GetInt("edge.threads"));
    server_ = std::make_unique<HttpServer>(options, deps_.metrics.registry());
    server_->Start();
    auto host = options.listen.substr(0, options.listen.rfind(':'));
    log::Info("edge", "serving HTTP", {{"listen", host + ":" + std::to_string(server_->port())}});
  }

  void BeginShutdown() override {
    if (server_) server_->StopAccepting();
  }

  void Shutdown(std::chrono::system_clock::time_point deadline) override {
    if (!server_) return;
    auto left = deadline - std::chrono::system_clock::now();
    server_->Shutdown(std::chrono::steady_clock::now() +
                      std::chrono::duration_cast<std::chrono::steady_clock::duration>(left));
    server_.reset();
  }

 private:
  ModuleDeps deps_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace

std::unique_ptr<Module> MakeEdgeModule(const ModuleDeps& deps) {
  return std::make_unique<EdgeModule>(deps);
}

}  // namespace tollgate::edge
