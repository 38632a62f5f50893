#include "tollgate/quota/pg_repository.h"

#include "tollgate/audit_pg.h"
#include "tollgate/pg.h"

namespace tollgate::quota {
namespace {

const char* PeriodName(PeriodKind kind) { return kind == PeriodKind::kMonth ? "month" : "day"; }

SubjectKind ParseSubject(const std::string& s) {
  if (s == "user") return SubjectKind::kUser;
  if (s == "ip") return SubjectKind::kIp;
  return SubjectKind::kKey;
}

std::optional<int64_t> Optional(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<int64_t>();
}

// libpqxx 6.4 has no std::optional parameters: a null `const char*` is SQL NULL.
struct Nullable {
  explicit Nullable(const std::optional<int64_t>& v)
      : null(!v), text(v ? std::to_string(*v) : "") {}
  const char* get() const { return null ? nullptr : text.c_str(); }
  bool null;
  std::string text;
};

}  // namespace

std::vector<PolicyOverride> PgQuotaRepository::LoadPolicies() {
  return pool_.Run([](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    std::vector<PolicyOverride> out;
    for (const auto& row :
         tx.exec("SELECT subject_kind, subject, rpm, tpm, monthly_tokens, daily_tokens "
                 "FROM policies")) {
      PolicyOverride p;
      p.kind = ParseSubject(row[0].as<std::string>());
      p.subject = row[1].as<std::string>();
      p.rpm = Optional(row[2]);
      p.tpm = Optional(row[3]);
      p.monthly_tokens = Optional(row[4]);
      p.daily_tokens = Optional(row[5]);
      out.push_back(std::move(p));
    }
    tx.commit();
    return out;
  });
}

void PgQuotaRepository::UpsertPolicy(const PolicyOverride& p, const AuditEntry& audit) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO policies (subject_kind, subject, rpm, tpm, monthly_tokens, daily_tokens) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (subject_kind, subject) DO UPDATE SET "
        "rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm, monthly_tokens = EXCLUDED.monthly_tokens, "
        "daily_tokens = EXCLUDED.daily_tokens, updated_at = now()",
        SubjectName(p.kind), p.subject, Nullable(p.rpm).get(), Nullable(p.tpm).get(),
        Nullable(p.monthly_tokens).get(), Nullable(p.daily_tokens).get());
    WriteAudit(tx, audit);
    tx.commit();
  });
}

bool PgQuotaRepository::DeletePolicy(SubjectKind kind, const std::string& subject,
                                     const AuditEntry& audit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto r = tx.exec_params("DELETE FROM policies WHERE subject_kind = $1 AND subject = $2",
                            SubjectName(kind), subject);
    if (r.affected_rows() == 0) return false;  // nothing changed: nothing to audit
    WriteAudit(tx, audit);
    tx.commit();
    return true;
  });
}

int64_t PgQuotaRepository::LoadUsage(const UsageKey& key) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    auto r = tx.exec_params(
        "SELECT tokens FROM usage WHERE subject_kind = $1 AND subject = $2 AND period_kind = $3 "
        "AND period = $4",
        SubjectName(key.kind), key.subject, PeriodName(key.period_kind), key.period);
    tx.commit();
    return r.empty() ? int64_t{0} : r[0][0].as<int64_t>();
  });
}

std::vector<size_t> PgQuotaRepository::CommitSettlements(const std::vector<SettledRequest>& batch) {
  return pool_.Run([&](pqxx::connection& conn) {
    // One transaction, one commit (one WAL flush) for the whole batch: the group commit.
    pqxx::work tx(conn);
    std::vector<size_t> fresh;
    for (size_t i = 0; i < batch.size(); ++i) {
      auto r = tx.exec_params(
          "INSERT INTO settled_requests (request_id) VALUES ($1) ON CONFLICT DO NOTHING "
          "RETURNING 1",
          batch[i].request_id);
      if (r.empty()) continue;
      fresh.push_back(i);
      for (const auto& d : batch[i].deltas)
        tx.exec_params(
            "INSERT INTO usage (subject_kind, subject, period_kind, period, tokens) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject_kind, subject, period_kind, period) "
            "DO UPDATE SET tokens = usage.tokens + EXCLUDED.tokens",
            SubjectName(d.key.kind), d.key.subject, PeriodName(d.key.period_kind), d.key.period,
            d.tokens);
    }
    tx.commit();
    return fresh;
  });
}

void PgQuotaRepository::PruneSettled(int days) {
  pool_.Run([&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    tx.exec_params(
        "DELETE FROM settled_requests WHERE settled_at < now() - make_interval(days => $1)", days);
    tx.commit();
  });
}

std::vector<AuditEntry> PgQuotaRepository::ListAudit(int32_t limit) {
  return pool_.Run([&](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    return ::tollgate::ListAudit(tx, limit);
  });
}

}  // namespace tollgate::quota
