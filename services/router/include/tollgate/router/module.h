#pragma once

#include <memory>
#include <vector>

#include "tollgate/migration.h"
#include "tollgate/module.h"

namespace tollgate::router {

// The router service's migrations (services/router/migrations), embedded at build time.
const std::vector<Migration>& Migrations();

std::unique_ptr<Module> MakeRouterModule(const ModuleDeps& deps);

}  // namespace tollgate::router
