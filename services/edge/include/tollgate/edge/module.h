#pragma once

#include <memory>

#include "tollgate/module.h"

namespace tollgate::edge {

std::unique_ptr<Module> MakeEdgeModule(const ModuleDeps& deps);

// What the schema cannot check of the edge's keys (edge.trusted_proxies must be CIDRs), for
// start-up and `tollgate check-config`; throws ConfigError naming the key.
void CheckEdgeConfig(const Config& config);

}  // namespace tollgate::edge
