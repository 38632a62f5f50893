// A process-wide stop request, set by the signal thread in main. Long start-up
// waits (a database that is not up yet) check it so SIGTERM is honoured at once.
#pragma once

#include <exception>

namespace tollgate {

void RequestStop();
bool StopRequested();

class StopRequestedError final : public std::exception {
 public:
  const char* what() const noexcept override { return "stop requested during start-up"; }
};

}  // namespace tollgate
