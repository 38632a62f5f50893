// PgRouterRepository and RouterAdmin against a real throwaway PostgreSQL with
// the router's embedded migrations.
#include "tollgate/router/pg_repository.h"

#include <gtest/gtest.h>

#include "test/fake_clock.h"
#include "test/pg_fixture.h"
#include "tollgate/encoding.h"
#include "tollgate/pg.h"
#include "tollgate/router/admin.h"
#include "tollgate/router/module.h"

namespace tollgate::router {
namespace {

using testing::TestDatabase;

template <typename Fn>
void ExpectRouterError(ErrorCode kind, Fn&& fn, const std::string& what_contains = "") {
  try {
    fn();
    ADD_FAILURE() << "no Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), kind) << e.what();
    if (!what_contains.empty()) {
      EXPECT_NE(std::string(e.what()).find(what_contains), std::string::npos) << e.what();
    }
  }
}

class RouterPgRepositoryTest : public ::testing::Test {
 protected:
  RouterPgRepositoryTest() {
    pqxx::connection conn(db_.dsn());
    Migrate(conn, "router", Migrations());
  }

  Provider MakeProvider(const std::string& name = "openai-main") {
    return repo_.CreateProvider(
        {name, ProviderType::kOpenAi, "https://api.openai.com/v1", "", true}, audit_);
  }

  TestDatabase db_;
  PgPool pool_{{db_.dsn(), 2, std::chrono::milliseconds(2000), "router-test"}};
  PgRouterRepository repo_{pool_};
  AuditEntry audit_{0, 0, "tester (test)", "test_change", "test:1", "{}"};
};

TEST_F(RouterPgRepositoryTest, MigrationsApplyAndAreIdempotent) {
  pqxx::connection conn(db_.dsn());
  auto again = Migrate(conn, "router", Migrations());
  EXPECT_EQ(again.applied, 0);
  EXPECT_EQ(again.schema_version, Migrations().back().version);
  EXPECT_EQ(repo_.LoadCatalogue(), Catalogue{});
}

TEST_F(RouterPgRepositoryTest, CatalogueRoundTrip) {
  Provider openai = MakeProvider();
  EXPECT_GT(openai.id, 0);
  EXPECT_GT(openai.created, 1600000000);
  Provider azure = repo_.CreateProvider(
      {"azure-eu", ProviderType::kAzureOpenAi, "https://eu.openai.azure.com", "2024-06-01", false},
      audit_);
  NewUpstreamKey nk;
  nk.provider_id = openai.id;
  nk.name = "primary";
  nk.secret = {std::string("\x00\x01\xff\x80"
                           "ciphertext",
                           14),
               std::string(12, '\x07')};
  nk.key_prefix = "sk-abc";
  nk.weight = 3;
  UpstreamKeyRecord key = repo_.CreateUpstreamKey(nk, audit_);
  EXPECT_EQ(key.secret, nk.secret) << "BYTEA survives binary bytes, NULs included";
  EXPECT_EQ(key.weight, 3);
  repo_.CreateModel({"gpt-4o", "openai"}, audit_);
  repo_.SetModelRoute({"gpt-4o", openai.id, "gpt-4o-2024-08-06"}, audit_);
  repo_.SetModelRoute({"gpt-4o", azure.id, "my-gpt4o-deployment"}, audit_);
  repo_.SetAlias("gpt-4o-latest", "gpt-4o", audit_);

  Catalogue c = repo_.LoadCatalogue();
  ASSERT_EQ(c.providers.size(), 2u);
  EXPECT_EQ(c.providers[0], openai);
  EXPECT_EQ(c.providers[1].type, ProviderType::kAzureOpenAi);
  EXPECT_EQ(c.providers[1].api_version, "2024-06-01");
  EXPECT_FALSE(c.providers[1].enabled);
  ASSERT_EQ(c.keys.size(), 1u);
  EXPECT_EQ(c.keys[0], key);
  ASSERT_EQ(c.models.size(), 1u);
  EXPECT_EQ(c.models[0].owned_by, "openai");
  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[1].upstream_model, "my-gpt4o-deployment");
  ASSERT_EQ(c.aliases.size(), 1u);
  EXPECT_EQ(c.aliases[0].model, "gpt-4o");

  // Setting a route again updates it in place.
  repo_.SetModelRoute({"gpt-4o", openai.id, "gpt-4o-2024-11-20"}, audit_);
  EXPECT_EQ(repo_.LoadCatalogue().routes[0].upstream_model, "gpt-4o-2024-11-20");
}

TEST_F(RouterPgRepositoryTest, DuplicatesAndMissingReferencesAreReported) {
  Provider p = MakeProvider();
  ExpectRouterError(
      ErrorCode::kAlreadyExists, [&] { MakeProvider(); }, "already exists");
  NewUpstreamKey nk;
  nk.provider_id = p.id;
  nk.name = "k";
  nk.secret = {"c", std::string(12, 'n')};
  nk.key_prefix = "x";
  repo_.CreateUpstreamKey(nk, audit_);
  ExpectRouterError(ErrorCode::kAlreadyExists, [&] { repo_.CreateUpstreamKey(nk, audit_); });
  nk.provider_id = 9999;
  ExpectRouterError(
      ErrorCode::kNotFound, [&] { repo_.CreateUpstreamKey(nk, audit_); }, "provider 9999");

  repo_.CreateModel({"m", "system"}, audit_);
  ExpectRouterError(ErrorCode::kAlreadyExists, [&] { repo_.CreateModel({"m", "system"}, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] {
    repo_.SetModelRoute({"nope", p.id, "x"}, audit_);
  });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.SetModelRoute({"m", 9999, "x"}, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.SetAlias("a", "nope", audit_); });
  ExpectRouterError(ErrorCode::kAlreadyExists, [&] { repo_.SetAlias("m", "m", audit_); });
  repo_.SetAlias("a", "m", audit_);
  ExpectRouterError(
      ErrorCode::kAlreadyExists,
      [&] {
        repo_.CreateModel({"a", "system"}, audit_);
      },
      "alias");

  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.UpdateProvider(9999, {}, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.UpdateUpstreamKey(9999, {}, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.DeleteUpstreamKey(9999, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.DeleteModel("nope", audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.DeleteModelRoute("m", p.id, audit_); });
  ExpectRouterError(ErrorCode::kNotFound, [&] { repo_.DeleteAlias("nope", audit_); });
}

TEST_F(RouterPgRepositoryTest, PartialUpdatesChangeOnlyWhatIsSet) {
  Provider p = repo_.CreateProvider(
      {"az", ProviderType::kAzureOpenAi, "https://a.openai.azure.com", "2024-02-01", true}, audit_);
  Provider disabled = repo_.UpdateProvider(p.id, {false, std::nullopt, std::nullopt}, audit_);
  EXPECT_FALSE(disabled.enabled);
  EXPECT_EQ(disabled.base_url, p.base_url);
  EXPECT_EQ(disabled.api_version, "2024-02-01");
  Provider moved = repo_.UpdateProvider(
      p.id, {std::nullopt, "https://b.openai.azure.com", "2024-06-01"}, audit_);
  EXPECT_FALSE(moved.enabled);
  EXPECT_EQ(moved.base_url, "https://b.openai.azure.com");
  EXPECT_EQ(moved.api_version, "2024-06-01");

  NewUpstreamKey nk;
  nk.provider_id = p.id;
  nk.name = "k";
  nk.secret = {"old", std::string(12, 'o')};
  nk.key_prefix = "old";
  nk.weight = 2;
  UpstreamKeyRecord k = repo_.CreateUpstreamKey(nk, audit_);
  UpstreamKeyPatch weight_only;
  weight_only.weight = 7;
  UpstreamKeyRecord w = repo_.UpdateUpstreamKey(k.id, weight_only, audit_);
  EXPECT_EQ(w.weight, 7);
  EXPECT_TRUE(w.enabled);
  EXPECT_EQ(w.secret, k.secret);
  UpstreamKeyPatch rotate;
  rotate.enabled = false;
  rotate.secret = SealedSecret{"new", std::string(12, 'N')};
  rotate.key_prefix = "new";
  UpstreamKeyRecord r = repo_.UpdateUpstreamKey(k.id, rotate, audit_);
  EXPECT_EQ(r.weight, 7);
  EXPECT_FALSE(r.enabled);
  EXPECT_EQ(r.secret, *rotate.secret);
  EXPECT_EQ(r.key_prefix, "new");
}

TEST_F(RouterPgRepositoryTest, DeletingAModelTakesItsRoutesAndAliases) {
  Provider p = MakeProvider();
  repo_.CreateModel({"m", "system"}, audit_);
  repo_.SetModelRoute({"m", p.id, "m"}, audit_);
  repo_.SetAlias("m2", "m", audit_);
  repo_.DeleteModel("m", audit_);
  Catalogue c = repo_.LoadCatalogue();
  EXPECT_TRUE(c.models.empty());
  EXPECT_TRUE(c.routes.empty());
  EXPECT_TRUE(c.aliases.empty());
  EXPECT_EQ(c.providers.size(), 1u);
}

TEST_F(RouterPgRepositoryTest, ListsKeysPerProvider) {
  Provider a = MakeProvider("a");
  Provider b = MakeProvider("b");
  const std::vector<std::pair<int64_t, std::string>> keys = {{a.id, "1"}, {a.id, "2"}, {b.id, "3"}};
  for (const auto& [provider, name] : keys) {
    NewUpstreamKey nk;
    nk.provider_id = provider;
    nk.name = name;
    nk.secret = {"c", std::string(12, 'n')};
    nk.key_prefix = "p";
    repo_.CreateUpstreamKey(nk, audit_);
  }
  EXPECT_EQ(repo_.ListUpstreamKeys(0).size(), 3u);
  EXPECT_EQ(repo_.ListUpstreamKeys(a.id).size(), 2u);
  EXPECT_EQ(repo_.ListUpstreamKeys(b.id).size(), 1u);
  EXPECT_EQ(repo_.ListProviders().size(), 2u);
}

// RouterAdmin over the real repository: what an operator does, end to end
// minus gRPC.
class RouterAdminTest : public RouterPgRepositoryTest {
 protected:
  RouterAdminTest() : box_(SecretBox::ParseKey(std::string(64, 'a'))) {}

  testing::FakeClock clock_;
  SecretBox box_;
  KeyPool pool_{KeyPoolOptions{}, clock_};
  CatalogueRefresher refresher_{repo_, pool_,
                                [this](const UpstreamKeyRecord& k) { return box_.Open(k.secret); }};
  RouterAdmin admin_{repo_, box_, pool_, refresher_};
};

TEST_F(RouterAdminTest, ChangesAreLiveInThePoolBeforeTheCallReturns) {
  Provider p = admin_.CreateProvider(
      {"openai", ProviderType::kOpenAi, "https://api.openai.com/v1///", "", true}, audit_);
  EXPECT_EQ(p.base_url, "https://api.openai.com/v1") << "trailing slashes dropped";
  const std::string secret = "sk-proj-LIVEsecretvalue0123456789";
  KeyListing k = admin_.CreateUpstreamKey(p.id, "main", secret, 0, true, audit_);
  EXPECT_EQ(k.weight, 1);
  EXPECT_EQ(k.masked_key, "sk-proj-...");
  admin_.CreateModel({"gpt-4o-mini", ""}, audit_);
  admin_.SetModelRoute({"gpt-4o-mini", p.id, ""}, audit_);
  admin_.SetAlias("mini", "gpt-4o-mini", audit_);

  auto plan = pool_.Route("mini");
  ASSERT_EQ(plan.status, RouteResult::Status::kOk);
  EXPECT_EQ(plan.model, "gpt-4o-mini");
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].api_key, secret) << "decrypted for Route";
  EXPECT_EQ(plan.attempts[0].upstream_model, "gpt-4o-mini") << "defaults to the public name";

  admin_.UpdateUpstreamKey(k.id, std::nullopt, false, std::nullopt, audit_);
  EXPECT_EQ(pool_.Route("mini").status, RouteResult::Status::kNoRoute) << "no usable key";
  admin_.UpdateUpstreamKey(k.id, std::nullopt, true, std::string("sk-rotated-0000000000000000"),
                           audit_);
  EXPECT_EQ(pool_.Route("mini").attempts.at(0).api_key, "sk-rotated-0000000000000000");
  admin_.DeleteAlias("mini", audit_);
  EXPECT_EQ(pool_.Route("mini").status, RouteResult::Status::kModelNotFound);
  admin_.DeleteUpstreamKey(k.id, audit_);
  EXPECT_EQ(pool_.Route("gpt-4o-mini").status, RouteResult::Status::kNoRoute);

  auto listing = admin_.ListCatalogue();
  ASSERT_EQ(listing.models.size(), 1u);
  EXPECT_EQ(listing.models[0].routes.size(), 1u);
}

TEST_F(RouterAdminTest, RejectsBadInput) {
  auto bad = [&](auto fn, const std::string& what) {
    ExpectRouterError(ErrorCode::kInvalidRequest, fn, what);
  };
  bad(
      [&] {
        admin_.CreateProvider({"", ProviderType::kOpenAi, "https://x", "", true}, audit_);
      },
      "name");
  bad(
      [&] {
        admin_.CreateProvider({"p", ProviderType::kOpenAi, "ftp://x", "", true}, audit_);
      },
      "base_url");
  bad(
      [&] {
        admin_.CreateProvider({"p", ProviderType::kOpenAi, "https://", "", true}, audit_);
      },
      "host");
  bad(
      [&] {
        admin_.CreateProvider({"p", ProviderType::kOpenAi, "https://x y", "", true}, audit_);
      },
      "base_url");
  bad(
      [&] {
        admin_.CreateProvider({"p", ProviderType::kAzureOpenAi, "https://x", "", true}, audit_);
      },
      "api_version");
  bad(
      [&] {
        admin_.CreateProvider({"p q", ProviderType::kOpenAi, "https://x", "", true}, audit_);
      },
      "may only contain");
  Provider p = admin_.CreateProvider(
      {"p", ProviderType::kOpenAi, "http://10.0.0.5:8000/v1", "", true}, audit_);
  bad([&] { admin_.CreateUpstreamKey(p.id, "k", "", 1, true, audit_); }, "secret");
  bad([&] { admin_.CreateUpstreamKey(p.id, "k", "sk bad", 1, true, audit_); }, "secret");
  bad([&] { admin_.CreateUpstreamKey(p.id, "k", "sk-ok", -1, true, audit_); }, "weight");
  bad([&] { admin_.CreateUpstreamKey(p.id, "k", "sk-ok", 10001, true, audit_); }, "weight");
  bad([&] { admin_.CreateModel({"", ""}, audit_); }, "name");
  bad([&] { admin_.SetAlias("x", "x", audit_); }, "itself");
  EXPECT_TRUE(repo_.ListUpstreamKeys(0).empty()) << "nothing was written";
}

TEST_F(RouterAdminTest, ABaseUrlThatAlreadyHoldsTheEndpointPathIsRefused) {
  auto bad = [&](ProviderType type, const std::string& url, const std::string& what) {
    ExpectRouterError(
        ErrorCode::kInvalidRequest,
        [&] {
          admin_.CreateProvider({"p", type, url, "2024-10-21", true}, audit_);
        },
        what);
  };
  const auto compat = ProviderType::kOpenAiCompatible;
  // The edge appends /chat/completions itself: a pasted endpoint would double it.
  bad(compat, "https://api.groq.com/openai/v1/chat/completions",
      "give https://api.groq.com/openai/v1.");
  bad(compat, "https://api.mistral.ai/v1/chat/completions/", "/chat/completions");
  bad(ProviderType::kOpenAi, "https://api.openai.com/v1/embeddings", "/embeddings");
  bad(compat, "http://127.0.0.1:8000/v1/v1", "doubled /v1");
  bad(ProviderType::kAnthropic, "https://api.anthropic.com/v1", "give https://api.anthropic.com.");
  bad(ProviderType::kAnthropic, "https://api.anthropic.com/v1/messages", "/v1/messages");
  bad(ProviderType::kAzureOpenAi, "https://r.openai.azure.com/openai/deployments/gpt-4o",
      "resource's endpoint");
  EXPECT_TRUE(repo_.ListProviders().empty()) << "nothing was written";

  // Every provider's own root is accepted as given (the path shapes docs/providers.md lists).
  for (const std::string url :
       {"https://generativelanguage.googleapis.com/v1beta/openai", "https://api.deepseek.com",
        "https://api.deepseek.com/v1", "https://api.mistral.ai/v1",
        "https://api.groq.com/openai/v1", "https://openrouter.ai/api/v1", "http://10.0.0.5:8000/v1",
        "http://10.0.0.5:11434/v1"})
    EXPECT_EQ(admin_
                  .CreateProvider({"p" + std::to_string(repo_.ListProviders().size()), compat,
                                   url + "/", "", true},
                                  audit_)
                  .base_url,
              url);
  // An update is checked against the provider's type too.
  Provider p = repo_.ListProviders().front();
  ExpectRouterError(
      ErrorCode::kInvalidRequest,
      [&] {
        ProviderPatch patch;
        patch.base_url = "https://api.deepseek.com/chat/completions";
        admin_.UpdateProvider(p.id, patch, audit_);
      },
      "/chat/completions");
}

TEST_F(RouterAdminTest, ModelLimitsAreStoredAuditedAndReachThePlan) {
  Provider p = admin_.CreateProvider(
      {"openai", ProviderType::kOpenAi, "https://api.openai.com/v1", "", true}, audit_);
  admin_.CreateUpstreamKey(p.id, "main", "sk-limits-0123456789", 1, true, audit_);
  ModelRecord created = admin_.CreateModel({"gpt-4o", "", 0, 16384, 0}, audit_);
  EXPECT_EQ(created.max_output_tokens, 16384);
  EXPECT_EQ(created.default_max_tokens, 0);
  admin_.SetModelRoute({"gpt-4o", p.id, ""}, audit_);
  admin_.SetAlias("four", "gpt-4o", audit_);
  const auto before = admin_.ListAuditLog(10000).size();
  ModelRecord set = admin_.SetModelLimits("gpt-4o", 8192, 1024, audit_);
  EXPECT_EQ(set.max_output_tokens, 8192);
  EXPECT_EQ(set.default_max_tokens, 1024);
  EXPECT_EQ(admin_.ListAuditLog(10000).size(), before + 1);
  // The canonical model's limits come with a plan asked for by alias.
  auto plan = pool_.Route("four");
  ASSERT_EQ(plan.status, RouteResult::Status::kOk);
  EXPECT_EQ(plan.max_output_tokens, 8192);
  EXPECT_EQ(plan.default_max_tokens, 1024);
  EXPECT_EQ(repo_.LoadCatalogue().models[0].default_max_tokens, 1024);

  auto bad = [&](auto fn, const std::string& what) {
    try {
      fn();
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidRequest);
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  bad([&] { admin_.SetModelLimits("gpt-4o", -1, 0, audit_); }, "max_output_tokens");
  bad([&] { admin_.SetModelLimits("gpt-4o", 0, 10'000'001, audit_); }, "default_max_tokens");
  bad([&] { admin_.SetModelLimits("gpt-4o", 100, 200, audit_); }, "must not exceed");
  bad([&] { admin_.CreateModel({"other", "", 0, 0, -3}, audit_); }, "default_max_tokens");
  EXPECT_THROW(admin_.SetModelLimits("nope", 1, 1, audit_), Error);
  EXPECT_EQ(admin_.ListAuditLog(10000).size(), before + 1) << "failed changes write nothing";
}

TEST_F(RouterAdminTest, KeyPrefixShowsLittle) {
  EXPECT_EQ(KeyPrefix("sk-abcdefghijklmnopqrstuvwxyz0123456789"), "sk-abcde");
  EXPECT_EQ(KeyPrefix("0123456789abcdef"), "0123");
  EXPECT_EQ(KeyPrefix("abc"), "");
}

TEST_F(RouterAdminTest, ThePlaintextSecretIsStoredNowhere) {
  const std::string secret = "sk-live-PLAINTEXT-must-never-hit-disk-4f9a1c";
  Provider p = admin_.CreateProvider(
      {"openai", ProviderType::kOpenAi, "https://api.openai.com/v1", "", true}, audit_);
  KeyListing k = admin_.CreateUpstreamKey(p.id, "main", secret, 2, true, audit_);
  // A second key with the same secret must not produce the same ciphertext.
  admin_.CreateUpstreamKey(p.id, "twin", secret, 1, true, audit_);

  pqxx::connection conn(db_.dsn());
  pqxx::nontransaction tx(conn);
  // Every column of every row, as text, and the BYTEA columns decoded raw too.
  std::string dump;
  for (const auto& row : tx.exec("SELECT t::text FROM upstream_keys t")) dump += row[0].c_str();
  for (const auto& row : tx.exec("SELECT encode(secret_ciphertext, 'escape') FROM upstream_keys"))
    dump += row[0].c_str();
  ASSERT_FALSE(dump.empty());
  EXPECT_EQ(dump.find(secret), std::string::npos);
  const std::string hex = HexEncode(secret);  // how BYTEA prints in t::text
  EXPECT_EQ(dump.find(hex.substr(16)), std::string::npos);
  EXPECT_EQ(dump.find(secret.substr(8)), std::string::npos) << "not even past the prefix";
  auto stored = tx.exec("SELECT key_prefix FROM upstream_keys ORDER BY id");
  EXPECT_EQ(std::string(stored[0][0].c_str()), "sk-live-");
  auto distinct = tx.exec("SELECT count(DISTINCT secret_ciphertext) FROM upstream_keys");
  EXPECT_EQ(distinct[0][0].as<int>(), 2);

  // The whole database, for good measure: no other table got a copy.
  for (const auto& table :
       {"providers", "models", "model_routes", "model_aliases", "schema_migrations"}) {
    for (const auto& row : tx.exec(std::string("SELECT t::text FROM ") + table + " t"))
      EXPECT_EQ(std::string(row[0].c_str()).find(secret), std::string::npos) << table;
  }
  // And the admin listing carries only the mask.
  for (const auto& listed : admin_.ListUpstreamKeys(0)) {
    EXPECT_EQ(listed.masked_key, "sk-live-...");
    EXPECT_EQ(listed.masked_key.find(secret.substr(8)), std::string::npos);
  }
  EXPECT_EQ(k.masked_key, "sk-live-...");
}

// The audit log: one row per change in the change's transaction, none for a failed change,
// never an upstream secret, and no way to rewrite it.
TEST_F(RouterAdminTest, ChangesAreAuditedOnceAndNeverHoldTheSecret) {
  auto count = [&] { return static_cast<int64_t>(admin_.ListAuditLog(10000).size()); };
  Provider p = admin_.CreateProvider(
      {"openai", ProviderType::kOpenAi, "https://api.openai.com/v1", "", true}, audit_);
  ASSERT_EQ(count(), 1);
  EXPECT_EQ(admin_.ListAuditLog(0)[0].target, "provider:" + std::to_string(p.id));

  AuditEntry with_request = audit_;
  with_request.details = R"({"provider_id":"1","name":"main","secret":"[redacted]"})";
  KeyListing k = admin_.CreateUpstreamKey(p.id, "main", "sk-secret-xyz", 1, true, with_request);
  auto log = admin_.ListAuditLog(1);
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].actor, "tester (test)");
  EXPECT_EQ(log[0].action, "test_change");
  EXPECT_EQ(log[0].target, "upstream_key:" + std::to_string(k.id));
  EXPECT_NE(log[0].details.find("\"key_prefix\""), std::string::npos) << log[0].details;
  admin_.UpdateUpstreamKey(k.id, std::nullopt, std::nullopt, std::string("sk-rotated-abcdefgh"),
                           audit_);
  for (const auto& e : admin_.ListAuditLog(0)) {
    EXPECT_EQ(e.details.find("sk-secret-xyz"), std::string::npos) << e.details;
    EXPECT_EQ(e.details.find("sk-rotated-abcdefgh"), std::string::npos) << e.details;
  }
  ASSERT_EQ(count(), 3);

  // Failed changes leave nothing behind.
  auto fails = [&](auto fn) { EXPECT_THROW(fn(), Error); };
  fails([&] { admin_.CreateUpstreamKey(9999, "k", "sk-secret-xyz", 1, true, audit_); });
  fails([&] { admin_.CreateUpstreamKey(p.id, "k", "sk bad", 1, true, audit_); });
  fails([&] {
    admin_.CreateProvider({"openai", ProviderType::kOpenAi, "https://x", "", true}, audit_);
  });
  fails([&] { admin_.UpdateProvider(9999, {}, audit_); });
  fails([&] { admin_.DeleteUpstreamKey(9999, audit_); });
  fails([&] { admin_.DeleteModel("nope", audit_); });
  fails([&] { admin_.SetModelRoute({"nope", p.id, ""}, audit_); });
  fails([&] { admin_.DeleteModelRoute("nope", p.id, audit_); });
  fails([&] { admin_.SetAlias("a", "nope", audit_); });
  fails([&] { admin_.DeleteAlias("nope", audit_); });
  EXPECT_EQ(count(), 3);

  admin_.CreateModel({"m", ""}, audit_);
  admin_.SetModelRoute({"m", p.id, ""}, audit_);
  admin_.SetAlias("a", "m", audit_);
  admin_.DeleteAlias("a", audit_);
  admin_.DeleteModelRoute("m", p.id, audit_);
  admin_.DeleteModel("m", audit_);
  admin_.UpdateProvider(p.id, {false, std::nullopt, std::nullopt}, audit_);
  admin_.DeleteUpstreamKey(k.id, audit_);
  EXPECT_EQ(count(), 11) << "one row per change";

  for (const char* sql :
       {"UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "TRUNCATE audit_log"}) {
    pqxx::connection conn(db_.dsn());
    pqxx::work tx(conn);
    EXPECT_THROW(tx.exec(sql), pqxx::sql_error) << sql;
  }
  EXPECT_EQ(count(), 11);
}

}  // namespace
}  // namespace tollgate::router
