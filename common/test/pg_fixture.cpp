#include "test/pg_fixture.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <pqxx/pqxx>

#include <atomic>
#include <cstdlib>
#include <random>

namespace tollgate::testing {

std::string ClusterDsn() {
  const char* host = std::getenv("TG_TEST_PGHOST");
  if (host == nullptr || *host == '\0') {
    ADD_FAILURE() << "TG_TEST_PGHOST is not set: run the tests through ctest (which starts a "
                     "throwaway PostgreSQL) or scripts/test.sh";
    return "host=/nonexistent user=postgres";
  }
  const char* port = std::getenv("TG_TEST_PGPORT");
  return std::string("host=") + host + " port=" + (port ? port : "5432") + " user=postgres";
}

TestDatabase::TestDatabase() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  name_ = "t_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" +
          std::to_string(rd() % 100000);
  pqxx::connection admin(ClusterDsn() + " dbname=postgres");
  pqxx::nontransaction tx(admin);
  tx.exec("CREATE DATABASE " + name_);
}

TestDatabase::~TestDatabase() {
  try {
    pqxx::connection admin(ClusterDsn() + " dbname=postgres");
    pqxx::nontransaction tx(admin);
    tx.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception&) {
    // The whole cluster is thrown away after the run.
  }
}

std::string TestDatabase::dsn() const { return ClusterDsn() + " dbname=" + name_; }

}  // namespace tollgate::testing
