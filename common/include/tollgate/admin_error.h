// An expected refusal of an admin request (bad input, unknown or duplicate
// object), raised by service logic and shown to the caller as is. Logic
// headers may use it: it carries no gRPC or database types.
#pragma once

#include <stdexcept>
#include <string>

namespace tollgate {

class AdminError final : public std::runtime_error {
 public:
  enum class Kind { kInvalidArgument, kNotFound, kAlreadyExists, kFailedPrecondition };
  AdminError(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

}  // namespace tollgate
