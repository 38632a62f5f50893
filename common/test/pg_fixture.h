// A fresh database per test on the throwaway PostgreSQL cluster that the test
// harness starts (scripts/test-pg.sh, wired as the ctest fixture "pg").
#pragma once

#include <string>

namespace tollgate::testing {

// libpq keywords reaching the harness's cluster (host=<socket dir> user=postgres).
std::string ClusterDsn();

class TestDatabase final {
 public:
  // Creates an empty database with a unique name; drops it on destruction.
  TestDatabase();
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& name() const { return name_; }
  std::string dsn() const;

 private:
  std::string name_;
};

}  // namespace tollgate::testing
