// Starting another program from a test (the tollgate binary, the mock upstream, openssl): the
// one helper, so no test forks, execs or reaps by hand.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tollgate::testing {

// Not final: a test may name its own kind of child (its program and options) as a subclass.
class ChildProcess {
 public:
  enum class Capture { kNone, kStdout, kStderr };  // the stream ReadLine / WaitForLog read
  struct Options {
    std::map<std::string, std::string> env;  // set on top of this process's environment
    Capture capture = Capture::kNone;
    std::string stderr_file;  // when set (and stderr is not captured): appended to this file
    bool quiet = false;       // stdin and every stream not captured or filed go to /dev/null
  };

  // Starts args[0] (a path, or a name looked up in PATH) with `args`. Throws when it cannot fork;
  // a program that cannot be run exits 127.
  explicit ChildProcess(const std::vector<std::string>& args, const Options& options);
  explicit ChildProcess(const std::vector<std::string>& args) : ChildProcess(args, Options{}) {}
  // Kills (SIGKILL) and reaps a child still running.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }

  // The captured stream, line by line (blocking): the next line without its '\n', nullopt at EOF.
  std::optional<std::string> ReadLine();
  // Reads captured lines until a JSON one satisfies `pred` (returned), or EOF (null).
  nlohmann::json WaitForLog(const std::function<bool(const nlohmann::json&)>& pred);
  // Reads the captured stream to EOF; everything read so far.
  std::string RestOfOutput();
  // Every captured line read so far.
  const std::string& output() const { return output_; }

  void Signal(int sig);
  // Waits up to `timeout` for the child to end: its exit code (128 + the signal when killed by
  // one), or -1 on timeout.
  int Wait(std::chrono::milliseconds timeout);
  // Sends `sig` and waits for the child to end; its exit code as Wait gives it.
  int Stop(int sig = SIGTERM);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  FILE* out_ = nullptr;  // the captured stream's read end
  std::string output_;
};

}  // namespace tollgate::testing
