#pragma once

#include <memory>

#include "tollgate/module.h"

namespace tollgate::edge {

std::unique_ptr<Module> MakeEdgeModule(const ModuleDeps& deps);

}  // namespace tollgate::edge
