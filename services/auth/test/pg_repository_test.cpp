// PgAuthRepository, AuthAdmin, KeyCache/Authenticator and the refresher against a real
// throwaway PostgreSQL with the auth service's embedded migrations.
#include "tollgate/auth/pg_repository.h"

#include <gtest/gtest.h>

#include <atomic>

#include "test/fake_clock.h"
#include "test/pg_fixture.h"
#include "tollgate/auth/admin.h"
#include "tollgate/auth/key_cache.h"
#include "tollgate/auth/module.h"
#include "tollgate/auth/refresher.h"
#include "tollgate/pg.h"

namespace tollgate::auth {
namespace {

using testing::FakeClock;
using testing::TestDatabase;

template <typename Fn>
void ExpectAuthError(ErrorCode kind, Fn&& fn, const std::string& what_contains = "") {
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

class AuthPgTest : public ::testing::Test {
 protected:
  AuthPgTest() {
    pqxx::connection conn(db_.dsn());
    Migrate(conn, "auth", Migrations());
  }

  Verdict Check(const std::string& key, const std::string& ip = "127.0.0.1") {
    return authenticator_.Authenticate(HashApiKey(key), ip).verdict;
  }

  UserRecord MakeUser(const std::string& name = "acme") {
    return admin_.CreateUser({name, UserStatus::kActive, {{"team", "research"}}}, audit_);
  }

  CreatedKey MakeKey(int64_t user_id, NewKeyRequest r = {}) {
    r.user_id = user_id;
    return admin_.CreateApiKey(std::move(r), audit_);
  }

  TestDatabase db_;
  PgPool pool_{{db_.dsn(), 2, std::chrono::milliseconds(2000), "auth-test"}};
  PgAuthRepository repo_{pool_};
  FakeClock clock_;
  KeyCache cache_;
  LastUsedRecorder recorder_{repo_};
  Authenticator authenticator_{cache_, clock_, recorder_};
  AuthAdmin admin_{repo_, cache_, clock_};
  AuditEntry audit_{0, 0, "tester (test)", "test_change", "test:1", R"({"why":"test"})"};
};

TEST_F(AuthPgTest, MigrationsApplyAndAreIdempotent) {
  pqxx::connection conn(db_.dsn());
  auto again = Migrate(conn, "auth", Migrations());
  EXPECT_EQ(again.applied, 0);
  EXPECT_EQ(again.schema_version, Migrations().back().version);
  EXPECT_TRUE(repo_.LoadKeys(std::nullopt).keys.empty());
}

TEST_F(AuthPgTest, CreateAuthenticateDisableRefused) {
  UserRecord user = MakeUser();
  EXPECT_GT(user.id, 0);
  EXPECT_EQ(user.metadata.at("team"), "research");
  CreatedKey key = MakeKey(user.id, {.name = "ci"});
  EXPECT_TRUE(LooksLikeApiKey(key.api_key));
  EXPECT_EQ(key.record.display_prefix, key.api_key.substr(0, 10) + "...");
  EXPECT_EQ(key.record.key_hash, HashApiKey(key.api_key));
  EXPECT_EQ(key.record.status, KeyStatus::kActive);
  EXPECT_EQ(key.record.name, "ci");

  // Only the hash is stored: the key appears nowhere in the database.
  pqxx::connection conn(db_.dsn());
  pqxx::read_transaction tx(conn);
  auto dump = tx.exec("SELECT string_agg(t::TEXT, '|') FROM api_keys t")[0][0].as<std::string>();
  EXPECT_EQ(dump.find(key.api_key), std::string::npos);
  EXPECT_EQ(dump.find(key.api_key.substr(10)), std::string::npos);

  auto decision = authenticator_.Authenticate(HashApiKey(key.api_key), "127.0.0.1");
  ASSERT_EQ(decision.verdict, Verdict::kOk);
  EXPECT_EQ(decision.principal->key_id, key.record.id);
  EXPECT_EQ(decision.principal->user_id, user.id);
  EXPECT_EQ(Check(GenerateApiKey()), Verdict::kUnknownKey);

  ApiKeyPatch disable;
  disable.status = KeyStatus::kDisabled;
  admin_.UpdateApiKey(key.record.id, disable, audit_);
  EXPECT_EQ(Check(key.api_key), Verdict::kKeyDisabled);
  ApiKeyPatch enable;
  enable.status = KeyStatus::kActive;
  admin_.UpdateApiKey(key.record.id, enable, audit_);
  EXPECT_EQ(Check(key.api_key), Verdict::kOk);

  // Disabling the user refuses all of its keys; enabling it brings them back.
  CreatedKey second = MakeKey(user.id);
  UserPatch off;
  off.status = UserStatus::kDisabled;
  EXPECT_EQ(admin_.UpdateUser(user.id, off, audit_).status, UserStatus::kDisabled);
  EXPECT_EQ(Check(key.api_key), Verdict::kUserDisabled);
  EXPECT_EQ(Check(second.api_key), Verdict::kUserDisabled);
  UserPatch on;
  on.status = UserStatus::kActive;
  admin_.UpdateUser(user.id, on, audit_);
  EXPECT_EQ(Check(second.api_key), Verdict::kOk);

  // Revoked is final.
  ApiKeyRecord revoked = admin_.RevokeApiKey(key.record.id, audit_);
  EXPECT_EQ(revoked.status, KeyStatus::kRevoked);
  EXPECT_GT(revoked.version, key.record.version);
  EXPECT_EQ(Check(key.api_key), Verdict::kKeyRevoked);
  EXPECT_EQ(admin_.RevokeApiKey(key.record.id, audit_).version, revoked.version) << "idempotent";
  ExpectAuthError(
      ErrorCode::kFailedPrecondition, [&] { admin_.UpdateApiKey(key.record.id, enable, audit_); },
      "revoked");
  ExpectAuthError(ErrorCode::kInvalidRequest, [&] {
    ApiKeyPatch p;
    p.status = KeyStatus::kRevoked;
    admin_.UpdateApiKey(second.record.id, p, audit_);
  });
  EXPECT_EQ(admin_.ListApiKeys(user.id, false).size(), 1u) << "revoked keys are left out";
  EXPECT_EQ(admin_.ListApiKeys(user.id, true).size(), 2u);
  EXPECT_EQ(admin_.ListApiKeys(0, true).size(), 2u);
}

TEST_F(AuthPgTest, ExpiryFollowsTheClock) {
  UserRecord user = MakeUser();
  const int64_t t0 = clock_.UnixSeconds();
  CreatedKey key = MakeKey(user.id, {.ttl_seconds = 60});
  EXPECT_EQ(key.record.expires_at, t0 + 60);
  EXPECT_EQ(Check(key.api_key), Verdict::kOk);
  clock_.Advance(std::chrono::seconds(59));
  EXPECT_EQ(Check(key.api_key), Verdict::kOk);
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(Check(key.api_key), Verdict::kKeyExpired);

  // Extending the expiry, then removing it.
  ApiKeyPatch later;
  later.expires_at = clock_.UnixSeconds() + 3600;
  EXPECT_EQ(admin_.UpdateApiKey(key.record.id, later, audit_).expires_at, *later.expires_at);
  EXPECT_EQ(Check(key.api_key), Verdict::kOk);
  clock_.Advance(std::chrono::seconds(7200));
  EXPECT_EQ(Check(key.api_key), Verdict::kKeyExpired);
  ApiKeyPatch never;
  never.expires_at = 0;
  EXPECT_EQ(admin_.UpdateApiKey(key.record.id, never, audit_).expires_at, 0);
  EXPECT_EQ(Check(key.api_key), Verdict::kOk);

  CreatedKey fixed = MakeKey(user.id, {.expires_at = clock_.UnixSeconds() + 10});
  EXPECT_EQ(Check(fixed.api_key), Verdict::kOk);
  clock_.Advance(std::chrono::seconds(10));
  EXPECT_EQ(Check(fixed.api_key), Verdict::kKeyExpired);

  ExpectAuthError(
      ErrorCode::kInvalidRequest,
      [&] { MakeKey(user.id, {.expires_at = clock_.UnixSeconds() - 1}); }, "future");
  ExpectAuthError(ErrorCode::kInvalidRequest, [&] {
    MakeKey(user.id, {.expires_at = clock_.UnixSeconds() + 5, .ttl_seconds = 5});
  });
}

TEST_F(AuthPgTest, IpAllowlistIpv4AndIpv6) {
  UserRecord user = MakeUser();
  CreatedKey key =
      MakeKey(user.id, {.allowed_cidrs = {"10.0.0.0/8", "2001:DB8::/32", "192.168.1.7"}});
  // Stored in PostgreSQL's canonical cidr form, which is also ours.
  EXPECT_EQ(key.record.allowed_cidrs,
            (std::vector<std::string>{"10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"}));
  EXPECT_EQ(Check(key.api_key, "10.20.30.40"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "::ffff:10.20.30.40"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "192.168.1.7"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "192.168.1.8"), Verdict::kIpNotAllowed);
  EXPECT_EQ(Check(key.api_key, "2001:db8:1::5"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "2001:db9::5"), Verdict::kIpNotAllowed);
  EXPECT_EQ(Check(key.api_key, "127.0.0.1"), Verdict::kIpNotAllowed);

  ApiKeyPatch loopback;
  loopback.allowed_cidrs = std::vector<std::string>{"127.0.0.0/8", "::1"};
  EXPECT_EQ(admin_.UpdateApiKey(key.record.id, loopback, audit_).allowed_cidrs,
            (std::vector<std::string>{"127.0.0.0/8", "::1/128"}));
  EXPECT_EQ(Check(key.api_key, "127.0.0.1"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "::1"), Verdict::kOk);
  EXPECT_EQ(Check(key.api_key, "10.20.30.40"), Verdict::kIpNotAllowed);
  ApiKeyPatch any;
  any.allowed_cidrs = std::vector<std::string>{};
  EXPECT_TRUE(admin_.UpdateApiKey(key.record.id, any, audit_).allowed_cidrs.empty());
  EXPECT_EQ(Check(key.api_key, "10.20.30.40"), Verdict::kOk);

  ExpectAuthError(
      ErrorCode::kInvalidRequest, [&] { MakeKey(user.id, {.allowed_cidrs = {"10.0.0.1/8"}}); },
      "10.0.0.0/8");
  ExpectAuthError(ErrorCode::kInvalidRequest,
                  [&] { MakeKey(user.id, {.allowed_cidrs = {"nope"}}); });
}

TEST_F(AuthPgTest, ModelAllowlistIsStoredInOrderAndMatchesWildcards) {
  UserRecord user = MakeUser();
  CreatedKey key = MakeKey(
      user.id,
      {.allowed_models = {"gpt-4o*", "text-embedding-3-small", "gpt-4o*"}, .limits_ref = "tier-1"});
  EXPECT_EQ(key.record.allowed_models,
            (std::vector<std::string>{"gpt-4o*", "text-embedding-3-small"}));
  EXPECT_EQ(key.record.limits_ref, "tier-1");
  auto principal = cache_.Find(HashApiKey(key.api_key));
  ASSERT_TRUE(principal);
  EXPECT_TRUE(ModelAllowed(principal->allowed_models, "gpt-4o-mini"));
  EXPECT_TRUE(ModelAllowed(principal->allowed_models, "text-embedding-3-small"));
  EXPECT_FALSE(ModelAllowed(principal->allowed_models, "gpt-3.5-turbo"));
  EXPECT_EQ(principal->limits_ref, "tier-1");

  ApiKeyPatch every;
  every.allowed_models = std::vector<std::string>{};
  admin_.UpdateApiKey(key.record.id, every, audit_);
  EXPECT_TRUE(ModelAllowed(cache_.Find(HashApiKey(key.api_key))->allowed_models, "gpt-3.5-turbo"));
  ExpectAuthError(ErrorCode::kInvalidRequest,
                  [&] { MakeKey(user.id, {.allowed_models = {"has space"}}); });
  ExpectAuthError(ErrorCode::kInvalidRequest,
                  [&] { MakeKey(user.id, {.limits_ref = "no spaces"}); });
}

TEST_F(AuthPgTest, UsersAndKeysValidation) {
  UserRecord user = MakeUser();
  ExpectAuthError(ErrorCode::kAlreadyExists, [&] { MakeUser(); });
  ExpectAuthError(ErrorCode::kInvalidRequest, [&] { MakeUser(""); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { MakeKey(user.id + 100); });
  ExpectAuthError(ErrorCode::kInvalidRequest, [&] { MakeKey(0); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.RevokeApiKey(12345, audit_); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.UpdateApiKey(12345, {}, audit_); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.UpdateUser(12345, {}, audit_); });

  UserPatch patch;
  patch.name = "acme-corp";
  patch.set_metadata = {{"tier", "gold"}};
  patch.remove_metadata = {"team"};
  UserRecord updated = admin_.UpdateUser(user.id, patch, audit_);
  EXPECT_EQ(updated.name, "acme-corp");
  EXPECT_EQ(updated.metadata, (std::map<std::string, std::string>{{"tier", "gold"}}));
  EXPECT_EQ(updated.status, UserStatus::kActive);
  MakeUser("other");
  UserPatch taken;
  taken.name = "other";
  ExpectAuthError(ErrorCode::kAlreadyExists, [&] { admin_.UpdateUser(user.id, taken, audit_); });
  auto users = admin_.ListUsers();
  ASSERT_EQ(users.size(), 2u);
  EXPECT_EQ(users[0], updated);
}

TEST_F(AuthPgTest, LastUsedIsWrittenInBatchesAndNeverMovesBack) {
  UserRecord user = MakeUser();
  CreatedKey a = MakeKey(user.id);
  CreatedKey b = MakeKey(user.id);
  EXPECT_EQ(a.record.last_used_at, 0);
  const int64_t t = clock_.UnixSeconds();
  EXPECT_EQ(Check(a.api_key), Verdict::kOk);
  clock_.Advance(std::chrono::seconds(5));
  EXPECT_EQ(Check(a.api_key), Verdict::kOk);
  recorder_.Record(b.record.id, t - 100);
  EXPECT_EQ(recorder_.pending(), 2u) << "two keys, one entry each, whatever the requests";
  EXPECT_EQ(admin_.ListApiKeys(user.id, false)[0].last_used_at, 0) << "nothing written yet";
  recorder_.Flush();
  EXPECT_EQ(recorder_.pending(), 0u);
  auto keys = admin_.ListApiKeys(user.id, false);
  EXPECT_EQ(keys[0].last_used_at, t + 5);
  EXPECT_EQ(keys[1].last_used_at, t - 100);
  recorder_.Record(a.record.id, t);  // older than what is stored
  recorder_.Flush();
  EXPECT_EQ(admin_.ListApiKeys(user.id, false)[0].last_used_at, t + 5);
  // Not a change of the key: no version bump, nothing for the watchers.
  EXPECT_EQ(admin_.ListApiKeys(user.id, false)[0].version, a.record.version);
}

TEST_F(AuthPgTest, RefresherLoadsChangesMadeElsewhereAndCacheTellsSubscribers) {
  UserRecord user = MakeUser();
  CreatedKey key = MakeKey(user.id);

  // A second replica: its own cache, loaded from the same database.
  KeyCache other;
  KeyRefresher refresher(repo_, other);
  std::vector<KeyChange> seen;
  int64_t id = other.Subscribe(
      [&](const std::vector<KeyChange>& c) { seen.insert(seen.end(), c.begin(), c.end()); });
  refresher.ReloadAll();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].key_hash, HashApiKey(key.api_key));
  refresher.ReloadChanged();
  EXPECT_EQ(seen.size(), 1u) << "unchanged rows in the overlap are no news";

  admin_.RevokeApiKey(key.record.id, audit_);  // on "this" replica
  EXPECT_EQ(other.Find(HashApiKey(key.api_key))->status, KeyStatus::kActive);
  refresher.ReloadChanged();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].principal.status, KeyStatus::kRevoked);
  EXPECT_EQ(other.Find(HashApiKey(key.api_key))->status, KeyStatus::kRevoked);

  // A user's status change reaches its keys through their version.
  CreatedKey second = MakeKey(user.id);
  UserPatch off;
  off.status = UserStatus::kDisabled;
  admin_.UpdateUser(user.id, off, audit_);
  refresher.ReloadChanged();
  EXPECT_EQ(other.Find(HashApiKey(second.api_key))->user_status, UserStatus::kDisabled);
  EXPECT_EQ(other.Find(HashApiKey(key.api_key))->user_status, UserStatus::kDisabled);

  // An older view never replaces a newer one.
  auto newer = repo_.ListApiKeys(user.id, true);
  ApiKeyRecord stale = newer[0];
  stale.version -= 1;
  stale.user_status = UserStatus::kActive;
  EXPECT_TRUE(other.Apply({stale}).empty());
  other.Unsubscribe(id);
  admin_.RevokeApiKey(second.record.id, audit_);
  size_t before = seen.size();
  refresher.ReloadChanged();
  EXPECT_EQ(seen.size(), before) << "unsubscribed";
}

// The audit log: one row per change in the change's transaction, none for a failed change,
// never the key, and no way to rewrite it.
TEST_F(AuthPgTest, ChangesAreAuditedOncePerChangeAndTheLogIsAppendOnly) {
  auto count = [&] { return static_cast<int64_t>(repo_.ListAudit(10000).size()); };
  UserRecord user = MakeUser();
  ASSERT_EQ(count(), 1);
  auto log = admin_.ListAuditLog(0);
  EXPECT_EQ(log[0].actor, "tester (test)");
  EXPECT_EQ(log[0].action, "test_change");
  EXPECT_EQ(log[0].target, "user:" + std::to_string(user.id)) << "a creation names the new row";
  EXPECT_GT(log[0].at_ms, 0);

  CreatedKey key = MakeKey(user.id);
  ASSERT_EQ(count(), 2);
  log = admin_.ListAuditLog(1);
  ASSERT_EQ(log.size(), 1u) << "newest first, limited";
  EXPECT_EQ(log[0].target, "api_key:" + std::to_string(key.record.id));
  EXPECT_NE(log[0].details.find(key.record.display_prefix), std::string::npos) << log[0].details;
  EXPECT_EQ(log[0].details.find(key.api_key), std::string::npos) << "never the key";
  EXPECT_NE(log[0].details.find("\"why\""), std::string::npos) << "the given details are kept";

  // Failed changes leave nothing behind.
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.UpdateUser(12345, {}, audit_); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.UpdateApiKey(12345, {}, audit_); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { admin_.RevokeApiKey(12345, audit_); });
  ExpectAuthError(ErrorCode::kAlreadyExists, [&] { MakeUser(); });
  ExpectAuthError(ErrorCode::kNotFound, [&] { MakeKey(999999); });
  EXPECT_EQ(count(), 2);

  admin_.RevokeApiKey(key.record.id, audit_);
  ExpectAuthError(ErrorCode::kFailedPrecondition,
                  [&] { admin_.UpdateApiKey(key.record.id, {}, audit_); });
  EXPECT_EQ(count(), 3);

  for (const char* sql :
       {"UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "TRUNCATE audit_log"}) {
    pqxx::connection conn(db_.dsn());
    pqxx::work tx(conn);
    EXPECT_THROW(tx.exec(sql), pqxx::sql_error) << sql;
  }
  EXPECT_EQ(count(), 3);
}

}  // namespace
}  // namespace tollgate::auth
