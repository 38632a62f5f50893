#pragma once

#include <memory>
#include <vector>

#include "tollgate/migration.h"
#include "tollgate/module.h"

namespace tollgate::auth {

// The auth service's migrations (services/auth/migrations), embedded at build time.
const std::vector<Migration>& Migrations();

std::unique_ptr<Module> MakeAuthModule(const ModuleDeps& deps);

}  // namespace tollgate::auth
