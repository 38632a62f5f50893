#include "tollgate/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace tollgate {
namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/tollgate_cfg_XXXXXX";
    int fd = mkstemp(tmpl);
    close(fd);
    path_ = tmpl;
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string LoadError(const std::string& yaml, const Config::Environment& env = {}) {
  TempFile f(yaml);
  try {
    Config::Load(f.path(), env);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, DefaultsApplyWithoutAFile) {
  Config c = Config::Load("", {});
  EXPECT_EQ(c.GetString("edge.listen"), "127.0.0.1:8080");
  EXPECT_EQ(c.GetInt("auth.database.pool_size"), 8);
  EXPECT_EQ(c.GetDuration("shutdown.drain_timeout"), std::chrono::seconds(10));
  EXPECT_EQ(c.GetList("edge.quota_targets"), std::vector<std::string>{"127.0.0.1:7102"});
}

TEST(ConfigTest, FileValuesAndNestedKeys) {
  TempFile ok(
      "edge:\n  listen: 0.0.0.0:9000\n  quota_targets: [a:1, b:2]\nauth:\n  database:\n"
      "    pool_size: 3\n    acquire_timeout: 250ms\n");
  Config c = Config::Load(ok.path(), {});
  EXPECT_EQ(c.GetString("edge.listen"), "0.0.0.0:9000");
  EXPECT_EQ(c.GetInt("auth.database.pool_size"), 3);
  EXPECT_EQ(c.GetDuration("auth.database.acquire_timeout"), std::chrono::milliseconds(250));
  EXPECT_EQ(c.GetList("edge.quota_targets"), (std::vector<std::string>{"a:1", "b:2"}));
}

TEST(ConfigTest, RejectsUnknownKeyNamingIt) {
  std::string err = LoadError("edge:\n  lisen: 0.0.0.0:9000\n");
  EXPECT_NE(err.find("unknown key 'edge.lisen'"), std::string::npos) << err;
}

TEST(ConfigTest, RejectsMalformedValuesNamingTheKey) {
  std::string err = LoadError("auth:\n  database:\n    pool_size: lots\n");
  EXPECT_NE(err.find("auth.database.pool_size"), std::string::npos) << err;
  EXPECT_NE(err.find("not an integer"), std::string::npos) << err;

  err = LoadError("auth:\n  database:\n    pool_size: 0\n");
  EXPECT_NE(err.find("outside [1, 256]"), std::string::npos) << err;

  err = LoadError("edge:\n  listen: localhost\n");
  EXPECT_NE(err.find("edge.listen"), std::string::npos) << err;

  err = LoadError("log:\n  level: loud\n");
  EXPECT_NE(err.find("log.level"), std::string::npos) << err;

  err = LoadError("shutdown:\n  drain_timeout: soon\n");
  EXPECT_NE(err.find("shutdown.drain_timeout"), std::string::npos) << err;

  err = LoadError("edge: [1, 2\n");
  EXPECT_NE(err.find("not valid YAML"), std::string::npos) << err;
}

TEST(ConfigTest, FieldPolicyListsAreNamesAndAFieldIsEitherStrippedOrRefused) {
  Config defaults = Config::Load("", {});
  EXPECT_EQ(defaults.GetList("edge.strip_fields"), std::vector<std::string>{"store"});
  EXPECT_TRUE(defaults.GetList("edge.reject_fields").empty());
  EXPECT_EQ(defaults.GetList("edge.allowed_service_tiers"),
            (std::vector<std::string>{"auto", "default"}));
  TempFile yaml(
      "edge:\n  reject_fields: [user, prediction]\n  strip_fields: []\n"
      "  allowed_service_tiers: [auto, default, priority]\n");
  Config c = Config::Load(yaml.path(), {});
  EXPECT_EQ(c.GetList("edge.reject_fields"), (std::vector<std::string>{"user", "prediction"}));
  EXPECT_TRUE(c.GetList("edge.strip_fields").empty());
  EXPECT_EQ(c.GetList("edge.allowed_service_tiers").back(), "priority");
  Config env = Config::Load("", {{"TOLLGATE_EDGE__REJECT_FIELDS", "user,prediction"},
                                 {"TOLLGATE_EDGE__STRIP_FIELDS", ""}});
  EXPECT_EQ(env.GetList("edge.reject_fields"), (std::vector<std::string>{"user", "prediction"}));
  EXPECT_TRUE(env.GetList("edge.strip_fields").empty());

  std::string err = LoadError("edge:\n  reject_fields: [store, user]\n");
  EXPECT_NE(err.find("edge.strip_fields"), std::string::npos) << err;
  EXPECT_NE(err.find("'store' is also in edge.reject_fields"), std::string::npos) << err;
  err = LoadError("edge:\n  reject_fields: [\"a b\"]\n");
  EXPECT_NE(err.find("edge.reject_fields"), std::string::npos) << err;
  EXPECT_NE(err.find("not a name"), std::string::npos) << err;
  err = LoadError("edge:\n  strip_fields: [store, stream_options]\n");
  EXPECT_NE(err.find("edge.strip_fields"), std::string::npos) << err;
  EXPECT_NE(err.find("'stream_options' is not allowed here"), std::string::npos) << err;
  err = LoadError("edge:\n  allowed_service_tiers: [\"auto,priority\"]\n");
  EXPECT_NE(err.find("edge.allowed_service_tiers"), std::string::npos) << err;
  try {
    Config::Load("", {{"TOLLGATE_EDGE__STRIP_FIELDS", "store,user"},
                      {"TOLLGATE_EDGE__REJECT_FIELDS", "user"}});
    FAIL() << "a field both stripped and refused accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'user' is also in edge.reject_fields"), std::string::npos)
        << e.what();
  }
}

TEST(ConfigTest, EnvironmentOverridesAndUnknownVariablesAreRejected) {
  Config c = Config::Load("", {{"TOLLGATE_EDGE__LISTEN", "127.0.0.1:1"},
                               {"TOLLGATE_EDGE__QUOTA_TARGETS", "q0:1,q1:2"},
                               {"TOLLGATE_CONFIG", "/ignored/here"},
                               {"PATH", "/bin"}});
  EXPECT_EQ(c.GetString("edge.listen"), "127.0.0.1:1");
  EXPECT_EQ(c.GetList("edge.quota_targets"), (std::vector<std::string>{"q0:1", "q1:2"}));

  try {
    Config::Load("", {{"TOLLGATE_EDGE__LISTNE", "x"}});
    FAIL() << "unknown variable accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("TOLLGATE_EDGE__LISTNE"), std::string::npos);
  }
  try {
    Config::Load("", {{"TOLLGATE_AUTH__WORKERS", "-1"}});
    FAIL() << "bad env value accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("auth.workers"), std::string::npos);
  }
}

TEST(ConfigTest, SecretsComeOnlyFromEnvironmentOrFile) {
  std::string err = LoadError("admin:\n  token: hunter2hunter2\n");
  EXPECT_NE(err.find("admin.token is a secret"), std::string::npos) << err;
  EXPECT_EQ(err.find("hunter2"), std::string::npos) << "the secret itself must not be echoed";

  TempFile secret("s3cret-token\n");
  TempFile cfg("admin:\n  token_file: " + secret.path() + "\n");
  EXPECT_EQ(Config::Load(cfg.path(), {}).GetString("admin.token"), "s3cret-token");
  EXPECT_EQ(Config::Load("", {{"TOLLGATE_ADMIN__TOKEN", "from-env"}}).GetString("admin.token"),
            "from-env");

  err = LoadError("router:\n  database:\n    dsn: host=db password=pw dbname=x\n");
  EXPECT_NE(err.find("contains a password"), std::string::npos) << err;
  err = LoadError("router:\n  database:\n    dsn: postgresql://u:pw@db/x\n");
  EXPECT_NE(err.find("contains a password"), std::string::npos) << err;
}

TEST(ConfigTest, DurationsParse) {
  EXPECT_EQ(ParseDuration("1500"), std::chrono::milliseconds(1500));
  EXPECT_EQ(ParseDuration("2s"), std::chrono::milliseconds(2000));
  EXPECT_EQ(ParseDuration("3m"), std::chrono::milliseconds(180000));
  EXPECT_THROW(ParseDuration("2 s"), std::invalid_argument);
  EXPECT_THROW(ParseDuration("s"), std::invalid_argument);
}

}  // namespace
}  // namespace tollgate
