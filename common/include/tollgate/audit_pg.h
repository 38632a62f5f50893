// Reading and writing a service's audit_log (see audit.h) inside a libpqxx
// transaction. For the Pg*Repository adapters only.
#pragma once

#include <pqxx/pqxx>
#include <vector>

#include "tollgate/audit.h"

namespace tollgate {

// Appends `entry` in `tx`, the transaction of the change it records.
void WriteAudit(pqxx::transaction_base& tx, const AuditEntry& entry);

// The newest `limit` entries, newest first.
std::vector<AuditEntry> ListAudit(pqxx::transaction_base& tx, int32_t limit);

}  // namespace tollgate
