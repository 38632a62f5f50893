// The hang watchdog of every GoogleTest binary (linked in by tollgate_gtest, see the root
// CMakeLists.txt): when one test runs longer than the limit, which is set just below the ctest
// TIMEOUT, it prints every thread's stack of this process and of its child processes (the
// services a test started) to stderr with gdb, then aborts. A test that ctest would have killed
// silently at its TIMEOUT leaves instead the place where it hung in the CI log.
//
// The limit is TOLLGATE_TEST_WATCHDOG_SECONDS (compiled in: the ctest TIMEOUT minus the time a
// dump needs), counted from the start of each test; the environment variable
// TG_TEST_WATCHDOG_SECONDS overrides it (0: off). A process under a debugger is left alone.
//
// It runs on a thread of its own, started before main, so it fires however wedged the test's
// threads are. gdb is started with posix_spawn (no fork handlers, no copy of a locked heap) and
// is allowed to attach by PR_SET_PTRACER (Yama's ptrace_scope 1 lets only ancestors attach).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef TOLLGATE_TEST_WATCHDOG_SECONDS
#define TOLLGATE_TEST_WATCHDOG_SECONDS 100
#endif

extern char** environ;

namespace tollgate::testing {
namespace {

using Clock = std::chrono::steady_clock;

// How long one gdb may take to attach and print (it reads the binary's debug information).
constexpr auto kDumpTimeout = std::chrono::seconds(15);
// After this long dumping, child processes are skipped: ctest's TIMEOUT comes soon after.
constexpr auto kChildrenBudget = std::chrono::seconds(12);

void Say(const std::string& text) {
  std::string line = "[tollgate watchdog] " + text + "\n";
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

double LimitSeconds() {
  if (const char* env = std::getenv("TG_TEST_WATCHDOG_SECONDS"); env && *env) {
    char* end = nullptr;
    double v = std::strtod(env, &end);
    if (end != env && v >= 0) return v;
  }
  return TOLLGATE_TEST_WATCHDOG_SECONDS;
}

bool Traced() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("TracerPid:", 0) == 0) return std::atoi(line.c_str() + 10) != 0;
  return false;
}

std::string Comm(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

// Direct children of this process (test-started services, mock upstreams).
std::vector<pid_t> Children() {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat;
    std::getline(in, stat);
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so read after the last ')'.
    auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == getpid() && state != "Z") out.push_back(std::stoi(name));
  }
  return out;
}

// Runs `args` with its stdout on our stderr; false if it could not start or did not finish in
// `timeout` (then it is killed).
bool Run(const std::vector<std::string>& args, std::chrono::seconds timeout) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  const auto give_up = Clock::now() + timeout;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() >= give_up) {
      Say(args[0] + " did not finish in " + std::to_string(timeout.count()) + " s; killed");
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Every thread's stack of `pid`, with gdb, else eu-stack (elfutils).
void DumpStacks(pid_t pid) {
  const std::string p = std::to_string(pid);
  Say("stacks of process " + p + " (" + Comm(pid) + "):");
  if (Run({"gdb", "-nx", "-batch", "-p", p, "-iex", "set debuginfod enabled off", "-ex",
           "set pagination off", "-ex", "set print frame-arguments scalars", "-ex",
           "thread apply all bt"},
          kDumpTimeout))
    return;
  if (Run({"eu-stack", "-p", p}, kDumpTimeout)) return;
  Say("could not print the stacks of " + p +
      ": install gdb (scripts/deps.sh --test) and allow ptrace (CAP_SYS_PTRACE in a container)");
}

std::string Seconds(double s) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", s);
  return text;
}

// What the watchdog's thread waits on. Never destroyed: the thread may still be waiting when the
// process exits (gtest deletes its listeners at exit, so this is not part of the listener).
struct State {
  Clock::duration limit;
  double limit_s = 0;
  std::mutex mu;
  std::condition_variable cv;
  Clock::time_point deadline;  // under mu
  std::string what;            // the test running, under mu

  void Arm(std::string test) {
    std::lock_guard lock(mu);
    deadline = Clock::now() + limit;
    what = std::move(test);
    cv.notify_all();
  }
};

[[noreturn]] void Fire(const State& state, const std::string& what) {
  const auto started = Clock::now();
  Say(what + " is still running after " + Seconds(state.limit_s) +
      " (the watchdog's limit, just below ctest's TIMEOUT): every thread's stack follows, then "
      "abort");
  // Let a non-ancestor attach when Yama restricts ptrace (EINVAL without Yama: harmless).
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  DumpStacks(getpid());
  for (pid_t child : Children()) {
    if (Clock::now() - started > kChildrenBudget) {
      Say("no time left for the stacks of child process " + std::to_string(child));
      continue;
    }
    DumpStacks(child);
  }
  // The children would outlive the abort (nothing else stops them): end them.
  for (pid_t child : Children()) kill(child, SIGKILL);
  Say("aborting in " + what);
  std::abort();
}

void Watch(State& state) {
  std::unique_lock lock(state.mu);
  while (true) {
    state.cv.wait_until(lock, state.deadline);
    if (Clock::now() < state.deadline) continue;  // woken early, or re-armed by the next test
    if (Traced()) {                               // a debugger holds the process: its user decides
      state.deadline = Clock::time_point::max();
      continue;
    }
    std::string what = state.what;
    lock.unlock();
    Fire(state, what);
  }
}

// Re-arms the watchdog at the start of every test: the limit is per test, so a whole binary run
// by hand (or --gtest_repeat) is not cut short.
class Rearm final : public ::testing::EmptyTestEventListener {
 public:
  explicit Rearm(State& state) : state_(state) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    state_.Arm(std::string(info.test_suite_name()) + "." + info.name());
  }

 private:
  State& state_;
};

// Before main, so the time before the first test is watched too.
const bool kInstalled = [] {
  const double limit = LimitSeconds();
  if (limit <= 0) return false;
  auto* state = new State;
  state->limit_s = limit;
  state->limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
  state->Arm("(before the first test)");
  std::thread([state] { Watch(*state); }).detach();
  ::testing::UnitTest::GetInstance()->listeners().Append(new Rearm(*state));
  return true;
}();

}  // namespace
}  // namespace tollgate::testing
