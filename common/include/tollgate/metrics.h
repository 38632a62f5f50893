// One prometheus-cpp registry per process, served on its own /metrics port.
#pragma once

#include <memory>
#include <string>

namespace prometheus {
class Registry;
class Exposer;
}  // namespace prometheus

namespace tollgate {

class Metrics final {
 public:
  // Binds `listen` ("host:port", port 0 picks a free one).
  explicit Metrics(const std::string& listen);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  int port() const { return port_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace tollgate
