// A test that hangs on purpose, for hang_watchdog_check.sh: the watchdog (hang_watchdog.cpp, with
// a 2 s limit from the environment) must print the stacks of every thread, this one's and the
// wedged helper's, and of the child process, then abort. Not a gtest_discover_tests binary:
// run alone it never ends.
#include <gtest/gtest.h>
#include <spawn.h>

#include <condition_variable>
#include <mutex>
#include <thread>

extern char** environ;

namespace {

std::mutex mu;
std::condition_variable never_notified;

// The name the check looks for in the dump: a thread parked for good, as a lost wake-up leaves it.
[[gnu::noinline]] void WedgedOnPurposeWaitingForAWakeUpThatNeverComes() {
  std::unique_lock lock(mu);
  while (true) never_notified.wait(lock);
}

TEST(HangWatchdog, DumpsEveryThreadAndTheChildrenThenAborts) {
  // A child process, as tests start services: its stack is dumped too, and it is killed.
  pid_t child = 0;
  char sleep[] = "sleep";
  char seconds[] = "300";
  char* argv[] = {sleep, seconds, nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", 1, 0);  // O_WRONLY
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", 1, 0);
  ASSERT_EQ(posix_spawnp(&child, "sleep", &actions, nullptr, argv, environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  std::printf("child process %d\n", static_cast<int>(child));
  std::fflush(stdout);
  std::thread wedged(WedgedOnPurposeWaitingForAWakeUpThatNeverComes);
  wedged.join();
}

}  // namespace
