#include "tollgate/stop.h"

#include <atomic>

namespace tollgate {
namespace {
std::atomic<bool> g_stop{false};
}  // namespace

void RequestStop() { g_stop.store(true); }
bool StopRequested() { return g_stop.load(); }

}  // namespace tollgate
