#include "test/child_process.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace tollgate::testing {
namespace {

int ExitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

ChildProcess::ChildProcess(const std::vector<std::string>& args, const Options& options) {
  if (args.empty()) throw std::invalid_argument("ChildProcess: no program");
  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int fds[2] = {-1, -1};
  if (options.capture != Capture::kNone && pipe(fds) != 0) throw std::runtime_error("pipe");
  const int captured = options.capture == Capture::kStdout   ? STDOUT_FILENO
                       : options.capture == Capture::kStderr ? STDERR_FILENO
                                                             : -1;
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork");
  if (pid_ == 0) {
    if (captured >= 0) {
      dup2(fds[1], captured);
      close(fds[0]);
      close(fds[1]);
    }
    if (!options.stderr_file.empty() && captured != STDERR_FILENO) {
      int fd = open(options.stderr_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) dup2(fd, STDERR_FILENO);
    }
    if (options.quiet) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, STDIN_FILENO);
      if (captured != STDOUT_FILENO) dup2(null, STDOUT_FILENO);
      if (captured != STDERR_FILENO && options.stderr_file.empty()) dup2(null, STDERR_FILENO);
    }
    for (const auto& [k, v] : options.env) setenv(k.c_str(), v.c_str(), 1);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  if (captured >= 0) {
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !reaped_) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_) fclose(out_);
}

std::optional<std::string> ChildProcess::ReadLine() {
  if (!out_) return std::nullopt;
  char* line = nullptr;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, out_);
  std::optional<std::string> result;
  if (n > 0) {
    result.emplace(line, static_cast<size_t>(n));
    output_ += *result;
    if (result->back() == '\n') result->pop_back();
  }
  free(line);
  return result;
}

nlohmann::json ChildProcess::WaitForLog(const std::function<bool(const nlohmann::json&)>& pred) {
  while (auto line = ReadLine()) {
    auto j = nlohmann::json::parse(*line, nullptr, false);
    if (!j.is_discarded() && pred(j)) return j;
  }
  return nullptr;
}

std::string ChildProcess::RestOfOutput() {
  if (!out_) return output_;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, out_)) > 0) output_.append(buf, n);
  return output_;
}

void ChildProcess::Signal(int sig) {
  if (pid_ > 0 && !reaped_) kill(pid_, sig);
}

int ChildProcess::Wait(std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      return ExitCode(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

int ChildProcess::Stop(int sig) {
  if (reaped_) return -1;
  kill(pid_, sig);
  int status = 0;
  waitpid(pid_, &status, 0);
  reaped_ = true;
  return ExitCode(status);
}

}  // namespace tollgate::testing
