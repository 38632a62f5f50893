#include "tollgate/quota/limiter.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "tollgate/civil_date.h"
#include "tollgate/saturating.h"

namespace tollgate::quota {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// On either clock: a window's end (steady) or a period's start (wall).
template <typename TimePoint>
milliseconds Until(TimePoint at, TimePoint now) {
  return std::max(milliseconds(0), duration_cast<milliseconds>(at - now));
}

// The tighter of two windows: the one with fewer units left (unlimited ones lose).
void Tighten(WindowState& into, const WindowState& w) {
  if (w.limit == 0) return;
  if (into.limit == 0 || w.remaining < into.remaining) into = w;
}

const char* SubjectLabel(SubjectKind kind) {
  switch (kind) {
    case SubjectKind::kKey:
      return "API key";
    case SubjectKind::kUser:
      return "user";
    case SubjectKind::kIp:
      return "client IP";
  }
  return "subject";
}

std::string Seconds(milliseconds ms) { return std::to_string((ms.count() + 999) / 1000) + "s"; }

}  // namespace

const char* SubjectName(SubjectKind kind) {
  switch (kind) {
    case SubjectKind::kKey:
      return "key";
    case SubjectKind::kUser:
      return "user";
    case SubjectKind::kIp:
      return "ip";
  }
  return "key";
}

const char* LimitName(LimitKind kind) {
  switch (kind) {
    case LimitKind::kRpm:
      return "rpm";
    case LimitKind::kTpm:
      return "tpm";
    case LimitKind::kMonthly:
      return "monthly";
    case LimitKind::kDaily:
      return "daily";
  }
  return "rpm";
}

std::string PeriodOf(PeriodKind kind, Clock::WallTime t) {
  return kind == PeriodKind::kMonth ? FormatMonth(DayOf(t)) : FormatDay(DayOf(t));
}

Clock::WallTime NextPeriodStart(PeriodKind kind, Clock::WallTime t) {
  return kind == PeriodKind::kMonth ? NextMonthStart(DayOf(t)) : DayOf(t) + std::chrono::days(1);
}

Limiter::Limiter(LimiterOptions options, const Clock& clock, QuotaRepository& repo)
    : options_(std::move(options)), clock_(clock), repo_(repo), nonce_(std::random_device{}()) {}

EffectivePolicy Limiter::PolicyLocked(SubjectKind kind, const std::string& subject) const {
  EffectivePolicy p;
  switch (kind) {
    case SubjectKind::kKey:
      p.limits = options_.key_defaults;
      break;
    case SubjectKind::kUser:
      p.limits = options_.user_defaults;
      p.limits.rpm = p.limits.tpm = 0;
      break;
    case SubjectKind::kIp:
      p.limits = options_.ip_defaults;
      p.limits.monthly_tokens = p.limits.daily_tokens = 0;
      break;
  }
  auto it = overrides_.find({kind, subject});
  if (it == overrides_.end()) return p;
  const PolicyOverride& o = it->second;
  p.overridden = true;
  if (o.rpm) p.limits.rpm = *o.rpm;
  if (o.tpm) p.limits.tpm = *o.tpm;
  if (o.monthly_tokens) p.limits.monthly_tokens = *o.monthly_tokens;
  if (o.daily_tokens) p.limits.daily_tokens = *o.daily_tokens;
  return p;
}

EffectivePolicy Limiter::Policy(SubjectKind kind, const std::string& subject) const {
  std::lock_guard lock(mu_);
  return PolicyLocked(kind, subject);
}

void Limiter::ReplacePolicies(std::vector<PolicyOverride> overrides) {
  std::map<SubjectRef, PolicyOverride> next;
  for (auto& o : overrides) next[{o.kind, o.subject}] = std::move(o);
  std::lock_guard lock(mu_);
  overrides_ = std::move(next);
}

void Limiter::PutPolicy(const PolicyOverride& policy) {
  std::lock_guard lock(mu_);
  overrides_[{policy.kind, policy.subject}] = policy;
}

void Limiter::RemovePolicy(SubjectKind kind, const std::string& subject) {
  std::lock_guard lock(mu_);
  overrides_.erase({kind, subject});
}

void Limiter::EnsureLoaded(const std::vector<UsageKey>& keys) {
  std::vector<UsageKey> missing;
  {
    std::lock_guard lock(mu_);
    for (const auto& k : keys)
      if (!cells_.count(k)) missing.push_back(k);
  }
  if (missing.empty()) return;
  // Outside the lock: one slow database read must not stall every other subject.
  std::vector<int64_t> loaded;
  loaded.reserve(missing.size());
  for (const auto& k : missing) loaded.push_back(repo_.LoadUsage(k));
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < missing.size(); ++i) cells_.try_emplace(missing[i], Cell{loaded[i], 0});
}

Limiter::Window& Limiter::WindowLocked(const SubjectRef& ref, Clock::SteadyTime now) {
  Window& w = windows_[ref];
  while (!w.entries.empty() && w.entries.front().at <= now - options_.window) {
    w.tokens -= w.entries.front().tokens;
    w.requests -= w.entries.front().requests;
    w.entries.pop_front();
  }
  return w;
}

std::deque<Limiter::Entry>::iterator Limiter::FindEntryLocked(Window& w, Clock::SteadyTime at,
                                                              uint64_t seq) {
  // Entries are in time order: a binary search to the entry's time, then its ties (usually none).
  auto e = std::lower_bound(w.entries.begin(), w.entries.end(), at,
                            [](const Entry& x, Clock::SteadyTime t) { return x.at < t; });
  for (; e != w.entries.end() && e->at == at; ++e)
    if (e->seq == seq) return e;
  return w.entries.end();  // already aged out
}

Limiter::Entry* Limiter::FindEntryLocked(const SubjectRef& ref, Clock::SteadyTime at,
                                         uint64_t seq) {
  auto w = windows_.find(ref);
  if (w == windows_.end()) return nullptr;
  auto e = FindEntryLocked(w->second, at, seq);
  return e == w->second.entries.end() ? nullptr : &*e;
}

void Limiter::InsertEntryLocked(Window& w, Entry e) {
  // Almost always at the back; only a lease's entry (in the future) can be passed.
  auto pos = w.entries.end();
  while (pos != w.entries.begin() && std::prev(pos)->at > e.at) --pos;
  w.tokens = SatAdd(w.tokens, e.tokens);
  w.requests = SatAdd(w.requests, e.requests);
  w.entries.insert(pos, e);
}

void Limiter::UnreserveLocked(const std::vector<UsageKey>& cells, int64_t tokens) {
  for (const auto& key : cells) {
    auto cell = cells_.find(key);
    if (cell != cells_.end())
      cell->second.reserved = std::max<int64_t>(0, cell->second.reserved - tokens);
  }
}

void Limiter::DropLeaseLocked(std::unordered_map<std::string, LeaseState>::iterator it) {
  UnreserveLocked(it->second.cells, it->second.reserved);
  expiries_.erase(it->second.expiry);
  leases_.erase(it);
}

void Limiter::ExpireLocked(Clock::SteadyTime now) {
  while (!expiries_.empty() && expiries_.begin()->first <= now) {
    auto lease = leases_.find(expiries_.begin()->second);
    if (lease != leases_.end()) {
      DropLeaseLocked(lease);
      continue;
    }
    auto it = reservations_.find(expiries_.begin()->second);
    if (it == reservations_.end()) {
      expiries_.erase(expiries_.begin());
      continue;
    }
    DropReservationLocked(it, /*remove_window_entries=*/false, std::nullopt);
  }
}

void Limiter::DropReservationLocked(std::unordered_map<std::string, Reservation>::iterator it,
                                    bool remove_window_entries,
                                    std::optional<int64_t> actual_tokens) {
  Reservation& r = it->second;
  for (const auto& key : r.cells) {
    auto cell = cells_.find(key);
    if (cell != cells_.end()) cell->second.reserved -= r.tokens;
  }
  if (remove_window_entries || actual_tokens) {
    for (const auto& ref : r.windows) {
      auto w = windows_.find(ref);
      if (w == windows_.end()) continue;
      auto& entries = w->second.entries;
      auto e = FindEntryLocked(w->second, r.at, r.seq);
      if (e == entries.end()) continue;  // already aged out
      if (remove_window_entries) {
        w->second.tokens -= e->tokens;
        w->second.requests -= e->requests;
        entries.erase(e);
      } else {
        w->second.tokens += *actual_tokens - e->tokens;
        e->tokens = *actual_tokens;
      }
    }
  }
  expiries_.erase(r.expiry);
  reservations_.erase(it);
}

std::string Limiter::NewReservationId(uint64_t seq) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "r%016llx%llx", static_cast<unsigned long long>(nonce_),
                static_cast<unsigned long long>(seq));
  return buf;
}

AdmitDecision Limiter::Admit(const AdmitInput& input) {
  const Clock::WallTime wall = clock_.WallNow();     // calendar periods
  const Clock::SteadyTime now = clock_.SteadyNow();  // windows, reservation expiry
  const int64_t cost = std::max<int64_t>(0, input.estimated_tokens);
  const Subjects& s = input.subjects;

  std::vector<SubjectRef> window_subjects;  // rate limited: key, IP
  if (!s.api_key_id.empty()) window_subjects.emplace_back(SubjectKind::kKey, s.api_key_id);
  if (!s.client_ip.empty()) window_subjects.emplace_back(SubjectKind::kIp, s.client_ip);
  std::vector<SubjectRef> quota_subjects;  // token quotas: key, user
  if (!s.api_key_id.empty()) quota_subjects.emplace_back(SubjectKind::kKey, s.api_key_id);
  if (!s.user_id.empty()) quota_subjects.emplace_back(SubjectKind::kUser, s.user_id);

  const std::string month = PeriodOf(PeriodKind::kMonth, wall);
  const std::string day = PeriodOf(PeriodKind::kDay, wall);
  std::vector<UsageKey> cell_keys;
  for (const auto& [kind, subject] : quota_subjects) {
    cell_keys.push_back({kind, subject, PeriodKind::kMonth, month});
    cell_keys.push_back({kind, subject, PeriodKind::kDay, day});
  }
  EnsureLoaded(cell_keys);

  std::lock_guard lock(mu_);
  ExpireLocked(now);
  AdmitDecision d;

  auto deny = [&](LimitKind limit, SubjectKind subject, milliseconds retry, std::string what) {
    Denial denial;
    denial.limit = limit;
    denial.subject = subject;
    denial.retry_after = retry;
    denial.message = std::move(what);
    d.denial = std::move(denial);
  };

  // Rate windows: requests + 1 <= RPM and tokens + cost <= TPM over the last `window`.
  for (const auto& ref : window_subjects) {
    const Limits limits = PolicyLocked(ref.first, ref.second).limits;
    Window& w = WindowLocked(ref, now);
    const int64_t used_requests = w.requests;
    const milliseconds full_reset =
        w.entries.empty() ? milliseconds(0) : Until(w.entries.back().at + options_.window, now);
    if (limits.rpm > 0) {
      Tighten(d.requests,
              {limits.rpm, std::max<int64_t>(0, limits.rpm - used_requests), full_reset});
      if (!d.denial && used_requests + 1 > limits.rpm) {
        // The oldest entries leave first; the request fits once this many have left.
        const int64_t must_leave = used_requests + 1 - limits.rpm;
        milliseconds retry = options_.window;
        int64_t left = 0;
        for (const auto& e : w.entries) {
          left += e.requests;
          if (left >= must_leave) {
            retry = Until(e.at + options_.window, now);
            break;
          }
        }
        deny(LimitKind::kRpm, ref.first, retry,
             std::string("Rate limit reached for requests per minute on this ") +
                 SubjectLabel(ref.first) + ": limit " + std::to_string(limits.rpm) + ", used " +
                 std::to_string(used_requests) + ". Please try again in " + Seconds(retry) + ".");
      }
    }
    if (limits.tpm > 0) {
      Tighten(d.tokens, {limits.tpm, std::max<int64_t>(0, limits.tpm - w.tokens), full_reset});
      if (!d.denial && SatAdd(w.tokens, cost) > limits.tpm) {
        milliseconds retry = options_.window;  // a request larger than the limit never fits
        if (cost <= limits.tpm) {
          int64_t left = w.tokens;
          for (const auto& e : w.entries) {
            left -= e.tokens;
            if (SatAdd(left, cost) <= limits.tpm) {
              retry = Until(e.at + options_.window, now);
              break;
            }
          }
        }
        deny(LimitKind::kTpm, ref.first, retry,
             std::string("Rate limit reached for tokens per minute on this ") +
                 SubjectLabel(ref.first) + ": limit " + std::to_string(limits.tpm) + ", used " +
                 std::to_string(w.tokens) + ", requested " + std::to_string(cost) +
                 ". Please try again in " + Seconds(retry) + ".");
      }
    }
  }

  // Token quotas: settled + reserved + cost <= quota, per calendar month and day.
  if (!d.denial) {
    for (const auto& key : cell_keys) {
      const Limits limits = PolicyLocked(key.kind, key.subject).limits;
      const bool monthly = key.period_kind == PeriodKind::kMonth;
      const int64_t quota = monthly ? limits.monthly_tokens : limits.daily_tokens;
      if (quota <= 0) continue;
      const Cell& c = cells_[key];
      if (SatAdd(SatAdd(c.settled, c.reserved), cost) <= quota) continue;
      deny(monthly ? LimitKind::kMonthly : LimitKind::kDaily, key.kind,
           Until(NextPeriodStart(key.period_kind, wall), wall),
           std::string("You exceeded the ") + (monthly ? "monthly" : "daily") +
               " token quota of this " + SubjectLabel(key.kind) + " (" + std::to_string(quota) +
               " tokens; " + std::to_string(c.settled + c.reserved) +
               " used or reserved). It resets at the start of the next " +
               (monthly ? "month" : "day") + " (UTC).");
      break;
    }
  }
  if (d.denial) {
    // Capacity leased out and unused is what this subject lacks: ask for it back.
    for (auto& [id, l] : leases_)
      if (!l.returned && l.subject.first == d.denial->subject &&
          (l.subject.second == s.api_key_id || l.subject.second == s.user_id ||
           l.subject.second == s.client_ip))
        l.recalled = true;
    return d;
  }

  // Admitted: record it everywhere at once.
  const uint64_t seq = next_seq_++;
  Reservation r;
  r.request_id = input.request_id;
  r.seq = seq;
  r.at = now;
  r.tokens = cost;
  for (const auto& ref : window_subjects) {
    InsertEntryLocked(windows_[ref], {now, seq, cost, 1});
    r.windows.push_back(ref);
  }
  for (const auto& key : cell_keys) {
    cells_[key].reserved = SatAdd(cells_[key].reserved, cost);
    r.cells.push_back(key);
  }
  // Report the figures after this request.
  for (WindowState* ws : {&d.requests, &d.tokens}) {
    if (ws->limit == 0) continue;
    ws->remaining = std::max<int64_t>(0, ws->remaining - (ws == &d.requests ? 1 : cost));
    ws->reset = options_.window;
  }
  d.reservation_id = NewReservationId(seq);
  r.expiry = expiries_.emplace(now + options_.reservation_ttl, d.reservation_id);
  reservations_.emplace(d.reservation_id, std::move(r));
  return d;
}

bool Limiter::Release(const std::string& reservation_id) {
  std::lock_guard lock(mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) return false;
  DropReservationLocked(it, /*remove_window_entries=*/true, std::nullopt);
  return true;
}

std::vector<SettledRequest> Limiter::PrepareSettle(const std::vector<SettleInput>& inputs) {
  const Clock::WallTime wall = clock_.WallNow();  // calendar periods
  const std::string month = PeriodOf(PeriodKind::kMonth, wall);
  const std::string day = PeriodOf(PeriodKind::kDay, wall);
  std::vector<SettledRequest> out;
  std::vector<UsageKey> keys;
  {
    std::lock_guard lock(mu_);
    for (const auto& in : inputs) {
      std::vector<SubjectRef> subjects;
      auto it = reservations_.find(in.reservation_id);
      if (it != reservations_.end()) {
        // The reservation knows its subjects: the ones this replica owns.
        for (const auto& key : it->second.cells)
          if (key.period_kind == PeriodKind::kMonth) subjects.emplace_back(key.kind, key.subject);
      } else {
        // Expired, or leases ("l1+l2"): the edge names exactly the subjects it settles here.
        if (!in.subjects.api_key_id.empty())
          subjects.emplace_back(SubjectKind::kKey, in.subjects.api_key_id);
        if (!in.subjects.user_id.empty())
          subjects.emplace_back(SubjectKind::kUser, in.subjects.user_id);
      }
      SettledRequest sr;
      sr.request_id = in.request_id + "/" + in.reservation_id;
      const int64_t tokens = std::max<int64_t>(0, in.actual_tokens);
      for (const auto& [kind, subject] : subjects) {
        sr.deltas.push_back({{kind, subject, PeriodKind::kMonth, month}, tokens});
        sr.deltas.push_back({{kind, subject, PeriodKind::kDay, day}, tokens});
      }
      for (const auto& d : sr.deltas) keys.push_back(d.key);
      out.push_back(std::move(sr));
    }
  }
  // Loaded before the commit, so the loaded totals never already hold these deltas.
  EnsureLoaded(keys);
  return out;
}

void Limiter::ApplySettled(const std::vector<SettleInput>& inputs,
                           const std::vector<SettledRequest>& prepared,
                           const std::vector<bool>& fresh) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto it = reservations_.find(inputs[i].reservation_id);
    if (it != reservations_.end())
      DropReservationLocked(it, /*remove_window_entries=*/false,
                            std::max<int64_t>(0, inputs[i].actual_tokens));
    if (!fresh[i]) continue;  // settled before: already counted
    // A request admitted from leases settles them together: "l1+l2" (one per subject).
    const std::string& ids = inputs[i].reservation_id;
    for (size_t pos = 0; !ids.empty() && ids[0] == 'l' && pos < ids.size();) {
      size_t end = ids.find('+', pos);
      if (end == std::string::npos) end = ids.size();
      auto lease = leases_.find(ids.substr(pos, end - pos));
      pos = end + 1;
      if (lease == leases_.end() || lease->second.unlimited_tokens) continue;
      // The estimate leaves the lease's reservation (the actual joins the settled total below);
      // the window keeps the actual tokens, never more than the lease put in it.
      LeaseState& l = lease->second;
      const int64_t estimate = std::clamp<int64_t>(inputs[i].lease_estimate, 0, l.reserved);
      UnreserveLocked(l.cells, estimate);
      l.reserved -= estimate;
      const int64_t give_back = std::max<int64_t>(
          0, inputs[i].lease_estimate - std::max<int64_t>(0, inputs[i].actual_tokens));
      if (l.windowed && give_back > 0) {
        if (Entry* e = FindEntryLocked(l.subject, l.at, l.seq)) {
          const int64_t d = std::min(give_back, e->tokens);
          e->tokens -= d;
          windows_[l.subject].tokens -= d;
        }
      }
    }
    for (const auto& d : prepared[i].deltas) {
      auto cell = cells_.find(d.key);
      if (cell != cells_.end()) cell->second.settled = SatAdd(cell->second.settled, d.tokens);
    }
  }
}

void Limiter::Expire() {
  const Clock::WallTime wall = clock_.WallNow();     // calendar periods
  const Clock::SteadyTime now = clock_.SteadyNow();  // windows, reservation expiry
  const std::string month = PeriodOf(PeriodKind::kMonth, wall);
  const std::string day = PeriodOf(PeriodKind::kDay, wall);
  std::lock_guard lock(mu_);
  ExpireLocked(now);
  for (auto it = cells_.begin(); it != cells_.end();) {
    const std::string& current = it->first.period_kind == PeriodKind::kMonth ? month : day;
    if (it->first.period != current && it->second.reserved == 0)
      it = cells_.erase(it);
    else
      ++it;
  }
  for (auto it = windows_.begin(); it != windows_.end();) {
    WindowLocked(it->first, now);
    if (it->second.entries.empty())
      it = windows_.erase(it);
    else
      ++it;
  }
}

UsageSnapshot Limiter::Usage(SubjectKind kind, const std::string& subject) {
  const Clock::WallTime wall = clock_.WallNow();     // calendar periods
  const Clock::SteadyTime now = clock_.SteadyNow();  // windows, reservation expiry
  UsageKey month{kind, subject, PeriodKind::kMonth, PeriodOf(PeriodKind::kMonth, wall)};
  UsageKey day{kind, subject, PeriodKind::kDay, PeriodOf(PeriodKind::kDay, wall)};
  if (kind != SubjectKind::kIp) EnsureLoaded({month, day});
  std::lock_guard lock(mu_);
  ExpireLocked(now);
  UsageSnapshot u;
  u.policy = PolicyLocked(kind, subject);
  if (kind != SubjectKind::kIp) {
    u.monthly_tokens = cells_[month].settled;
    u.daily_tokens = cells_[day].settled;
    u.reserved_tokens = cells_[month].reserved;
  }
  auto w = windows_.find({kind, subject});
  if (w != windows_.end()) {
    Window& win = WindowLocked(w->first, now);
    u.window_requests = win.requests;
    u.window_tokens = win.tokens;
  }
  return u;
}

LeaseGrant Limiter::Lease(const LeaseAsk& ask) {
  LeaseGrant g;
  if (options_.lease_ttl <= milliseconds(0) || ask.subject.empty()) return g;
  const Clock::WallTime wall = clock_.WallNow();
  const Clock::SteadyTime now = clock_.SteadyNow();
  const SubjectRef ref{ask.kind, ask.subject};
  const bool windowed = ask.kind != SubjectKind::kUser;
  std::vector<UsageKey> cell_keys;
  if (ask.kind != SubjectKind::kIp) {
    cell_keys.push_back(
        {ask.kind, ask.subject, PeriodKind::kMonth, PeriodOf(PeriodKind::kMonth, wall)});
    cell_keys.push_back(
        {ask.kind, ask.subject, PeriodKind::kDay, PeriodOf(PeriodKind::kDay, wall)});
  }
  EnsureLoaded(cell_keys);

  std::lock_guard lock(mu_);
  ExpireLocked(now);
  const Limits limits = PolicyLocked(ask.kind, ask.subject).limits;
  // Headroom per dimension; nullopt: unlimited.
  std::optional<int64_t> requests_room, tokens_room;
  auto tighten = [](std::optional<int64_t>& room, int64_t v) {
    room = room ? std::min(*room, v) : v;
  };
  Window* w = windowed ? &WindowLocked(ref, now) : nullptr;
  if (w && ask.kind != SubjectKind::kUser) {
    if (limits.rpm > 0) tighten(requests_room, limits.rpm - w->requests);
    if (limits.tpm > 0) tighten(tokens_room, limits.tpm - w->tokens);
  }
  for (const auto& key : cell_keys) {
    const int64_t quota =
        key.period_kind == PeriodKind::kMonth ? limits.monthly_tokens : limits.daily_tokens;
    if (quota <= 0) continue;
    const Cell& c = cells_[key];
    tighten(tokens_room, quota - SatAdd(c.settled, c.reserved));
  }
  int64_t requests = kLeaseUnlimited, tokens = kLeaseUnlimited;
  if (requests_room) {
    // Close to the limit every request is decided here, one at a time.
    if (*requests_room < options_.lease_min_headroom) return g;
    requests = std::min(std::max<int64_t>(1, ask.requests), *requests_room / kLeaseShare);
    if (requests < 1) return g;
  }
  if (tokens_room) {
    tokens = std::min(std::max<int64_t>(1, ask.tokens), *tokens_room / kLeaseShare);
    if (tokens < std::max<int64_t>(1, ask.min_tokens)) return g;
  }

  const uint64_t seq = next_seq_++;
  char buf[48];
  std::snprintf(buf, sizeof buf, "l%016llx%llx", static_cast<unsigned long long>(nonce_),
                static_cast<unsigned long long>(seq));
  LeaseState l;
  l.subject = ref;
  l.seq = seq;
  l.windowed = windowed;
  l.unlimited_requests = requests == kLeaseUnlimited;
  l.unlimited_tokens = tokens == kLeaseUnlimited;
  const Clock::SteadyTime until = now + options_.lease_ttl;
  l.at = until;
  const int64_t entry_requests = l.unlimited_requests ? 0 : requests;
  const int64_t entry_tokens = l.unlimited_tokens ? 0 : tokens;
  if (w && (entry_requests > 0 || entry_tokens > 0))
    InsertEntryLocked(*w, {until, seq, entry_tokens, entry_requests});
  if (!l.unlimited_tokens) {
    for (const auto& key : cell_keys) cells_[key].reserved = SatAdd(cells_[key].reserved, tokens);
    l.cells = cell_keys;
    l.reserved = tokens;
  }
  l.expiry = expiries_.emplace(until + options_.reservation_ttl, buf);
  leases_.emplace(buf, std::move(l));

  g.granted = true;
  g.lease_id = buf;
  g.requests = requests;
  g.tokens = tokens;
  g.ttl = options_.lease_ttl;
  if (w) {
    const milliseconds reset =
        w->entries.empty() ? milliseconds(0) : Until(w->entries.back().at + options_.window, now);
    if (limits.rpm > 0)
      g.requests_window = {limits.rpm, std::max<int64_t>(0, limits.rpm - w->requests), reset};
    if (limits.tpm > 0)
      g.tokens_window = {limits.tpm, std::max<int64_t>(0, limits.tpm - w->tokens), reset};
  }
  return g;
}

void Limiter::ReturnLease(const LeaseReturn& ret) {
  const Clock::SteadyTime now = clock_.SteadyNow();
  std::lock_guard lock(mu_);
  auto it = leases_.find(ret.lease_id);
  if (it == leases_.end()) return;  // expired (or another incarnation's)
  LeaseState& l = it->second;
  // What an unlimited dimension admitted joins the window now (usage reports, and a policy that
  // becomes limited counts it).
  const int64_t used_requests = l.unlimited_requests ? std::max<int64_t>(0, ret.used_requests) : 0;
  const int64_t used_tokens = l.unlimited_tokens ? std::max<int64_t>(0, ret.used_tokens) : 0;
  if (l.windowed && (used_requests > 0 || used_tokens > 0))
    InsertEntryLocked(WindowLocked(l.subject, now), {now, next_seq_++, used_tokens, used_requests});
  if (!ret.final || l.returned) return;
  l.returned = true;
  if (l.windowed) {
    if (Entry* e = FindEntryLocked(l.subject, l.at, l.seq)) {
      Window& w = windows_[l.subject];
      const int64_t r =
          l.unlimited_requests ? 0 : std::clamp<int64_t>(ret.unused_requests, 0, e->requests);
      const int64_t t =
          l.unlimited_tokens ? 0 : std::clamp<int64_t>(ret.unused_tokens, 0, e->tokens);
      e->requests -= r;
      e->tokens -= t;
      w.requests -= r;
      w.tokens -= t;
    }
  }
  if (!l.unlimited_tokens) {
    const int64_t t = std::clamp<int64_t>(ret.unused_tokens, 0, l.reserved);
    UnreserveLocked(l.cells, t);
    l.reserved -= t;
  }
  // Kept until its expiry: the requests still running settle through it.
}

std::vector<std::string> Limiter::RecalledLeases() const {
  std::vector<std::string> out;
  std::lock_guard lock(mu_);
  for (const auto& [id, l] : leases_)
    if (l.recalled && !l.returned) out.push_back(id);
  return out;
}

size_t Limiter::live_leases() const {
  std::lock_guard lock(mu_);
  return leases_.size();
}

size_t Limiter::live_reservations() const {
  std::lock_guard lock(mu_);
  return reservations_.size();
}

}  // namespace tollgate::quota
