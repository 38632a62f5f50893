// One embedded schema migration (services/<svc>/migrations/NNNN_name.sql). Kept apart from pg.h
// so a module's header names its migrations without pulling libpqxx in.
#pragma once

#include <cstdint>
#include <string>

namespace tollgate {

struct Migration {
  int64_t version;
  std::string name;
  std::string sql;
};

}  // namespace tollgate
