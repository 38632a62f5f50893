#include "tollgate/metrics.h"

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

namespace tollgate {

Metrics::Metrics(const std::string& listen)
    : registry_(std::make_shared<prometheus::Registry>()),
      exposer_(std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1)) {
  exposer_->RegisterCollectable(registry_);
  auto ports = exposer_->GetListeningPorts();
  port_ = ports.empty() ? 0 : ports.front();
}

Metrics::~Metrics() = default;

}  // namespace tollgate
