#include "tollgate/quota/pg_repository.h"

#include <map>
#include <set>
#include <string_view>

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

// The settlement statements: fixed text, prepared once per connection (tollgate/pg.h); rows as
// one array per column.
const PgStatement kSettle{"quota_settle",
                          "INSERT INTO settled_requests (request_id) SELECT unnest($1::TEXT[])"};
const PgStatement kSettleNew{"quota_settle_new",
                             "INSERT INTO settled_requests (request_id) SELECT unnest($1::TEXT[]) "
                             "ON CONFLICT DO NOTHING RETURNING request_id"};
const PgStatement kAddUsage{
    "quota_add_usage",
    "INSERT INTO usage (subject_kind, subject, period_kind, period, tokens) "
    "SELECT k, s, pk, p, t FROM " +
        PgUnnest({"TEXT", "TEXT", "TEXT", "TEXT", "BIGINT"}, {"k", "s", "pk", "p", "t"}) +
        " "
        "ON CONFLICT (subject_kind, subject, period_kind, period) "
        "DO UPDATE SET tokens = usage.tokens + EXCLUDED.tokens"};

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
  if (batch.empty()) return {};
  // A request id twice in one batch: the first delivery counts.
  std::vector<size_t> first;
  {
    std::set<std::string_view> seen;
    for (size_t i = 0; i < batch.size(); ++i)
      if (seen.insert(batch[i].request_id).second) first.push_back(i);
  }
  // One transaction and two statements for the whole batch (the group commit): the requests
  // not settled before, then every total they add to, summed per row and in key order, so
  // concurrent replicas wait for each other instead of deadlocking. `skip_settled` false: a
  // plain INSERT of the request ids, which one settled before (a redelivery after a lost
  // acknowledgement) fails with a unique violation, rolling everything back; true: ON CONFLICT
  // DO NOTHING skips them, paying a pre-check of the index per row.
  auto write = [&](pqxx::connection& conn, bool skip_settled) {
    pqxx::work tx(conn);
    std::set<std::string> inserted;
    constexpr size_t kChunk = 5000;
    for (size_t from = 0; from < first.size(); from += kChunk) {
      const size_t to = std::min(first.size(), from + kChunk);
      PgArrays ids(1);
      for (size_t k = from; k < to; ++k) ids.Text(batch[first[k]].request_id);
      const std::vector<std::string> arrays = ids.Finish();
      if (!skip_settled) {
        PgExecPrepared(tx, kSettle, pqxx::prepare::make_dynamic_params(arrays));
        continue;
      }
      for (const auto& row :
           PgExecPrepared(tx, kSettleNew, pqxx::prepare::make_dynamic_params(arrays)))
        inserted.insert(row[0].as<std::string>());
    }
    std::vector<size_t> fresh;
    std::map<UsageKey, int64_t> totals;
    for (size_t i : first) {
      if (skip_settled && !inserted.count(batch[i].request_id)) continue;
      fresh.push_back(i);
      for (const auto& d : batch[i].deltas) totals[d.key] += d.tokens;
    }
    constexpr size_t kRows = 2000;  // rows per statement
    auto it = totals.begin();
    while (it != totals.end()) {
      PgArrays rows(5);
      for (; it != totals.end() && rows.rows() < kRows; ++it)
        rows.Text(SubjectName(it->first.kind))
            .Text(it->first.subject)
            .Text(PeriodName(it->first.period_kind))
            .Text(it->first.period)
            .Int(it->second);
      PgExecPrepared(tx, kAddUsage, pqxx::prepare::make_dynamic_params(rows.Finish()));
    }
    tx.commit();
    return fresh;
  };
  return pool_.Run([&](pqxx::connection& conn) {
    try {
      return write(conn, false);
    } catch (const pqxx::unique_violation&) {
      // A request of the batch was settled before; nothing of this attempt was. Again in a new
      // transaction, skipping what is settled.
    }
    return write(conn, true);
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
