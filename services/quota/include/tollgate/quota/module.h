#pragma once

#include <memory>
#include <vector>

#include "tollgate/migration.h"
#include "tollgate/module.h"

namespace tollgate::quota {

// The quota service's migrations (services/quota/migrations), embedded at build time.
const std::vector<Migration>& Migrations();

std::unique_ptr<Module> MakeQuotaModule(const ModuleDeps& deps);

}  // namespace tollgate::quota
