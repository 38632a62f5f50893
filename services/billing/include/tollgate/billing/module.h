#pragma once

#include <memory>
#include <vector>

#include "tollgate/migration.h"
#include "tollgate/module.h"

namespace tollgate::billing {

// The billing service's migrations (services/billing/migrations), embedded at build time.
const std::vector<Migration>& Migrations();

std::unique_ptr<Module> MakeBillingModule(const ModuleDeps& deps);

}  // namespace tollgate::billing
