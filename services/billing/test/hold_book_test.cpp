// The in-memory hold book on its own: the load/settle race, request ids across users, expiry.
#include "tollgate/billing/hold_book.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace tollgate::billing {
namespace {

TEST(HoldBook, ALoadCountsEachChargeOnceHoweverReadsAndCommitsInterleave) {
  HoldBook book;
  EXPECT_FALSE(book.Place(1, "r0", 10, 0, 1000).has_value()) << "not loaded yet";
  book.Load({{1, true, 100, 0, 1}});
  ASSERT_TRUE(book.Place(1, "r1", 10, 0, 1000)->granted);
  // A refresh reads the row at version 1 (100); meanwhile a record of 30 commits (version 2)
  // and settles here before the refresh installs what it read.
  book.Settle({{1, 0, 30, 2}});
  book.Load({{1, true, 100, 0, 1}});  // the charge is not in that row
  EXPECT_EQ(book.Available(1, 0), 100 - 30 - 10);
  EXPECT_FALSE(book.Place(1, "r2", 61, 0, 1000)->granted);  // 100 - 30 - 10 = 60
  EXPECT_TRUE(book.Place(1, "r3", 60, 0, 1000)->granted);
  // A read that includes it (version 2) does not count it again.
  book.Load({{1, true, 70, 0, 2}});
  EXPECT_EQ(book.HeldMicros(1, 0), 70);
  EXPECT_FALSE(book.Place(1, "r4", 1, 0, 1000)->granted);
  // A charge committed and read by a load before it settles here is in the balance already.
  book.Load({{1, true, 50, 0, 3}});  // version 3: another 20 charged
  book.Settle({{1, 0, 20, 3}});      // its settle, late: already in the 50
  EXPECT_EQ(book.Available(1, 0), 50 - 70);
  EXPECT_FALSE(book.Place(1, "r5", 1, 0, 1000)->granted) << "50 - 70 held";
  book.Settle({{1, 0, 0, 0}});
  // Two records of one batch share the account's version: both count.
  book.Load({{1, true, 500, 0, 3}});
  book.Settle({{1, 0, 10, 4}, {1, 0, 15, 4}});
  book.Load({{1, true, 500, 0, 3}});  // a read from before that batch
  EXPECT_EQ(book.Available(1, 0), 500 - 25 - 70);
  EXPECT_TRUE(book.Place(1, "r6", 500 - 25 - 70, 0, 1000)->granted);
  EXPECT_FALSE(book.Place(1, "r7", 1, 0, 1000)->granted);
}

TEST(HoldBook, RequestIdsAreUniqueAcrossUsersAndHoldsExpire) {
  HoldBook book;
  book.Load({{1, true, 100, 0, 1}, {2, true, 100, 0, 1}});
  auto first = book.Place(1, "same", 40, 0, 1000);
  ASSERT_TRUE(first->granted);
  EXPECT_EQ(book.Place(1, "same", 40, 0, 1000)->hold_id, first->hold_id);
  EXPECT_TRUE(book.Place(2, "same", 40, 0, 1000)->request_id_taken);
  EXPECT_EQ(book.HeldMicros(1, 0), 40);
  EXPECT_EQ(book.HeldMicros(2, 0), 0);
  EXPECT_EQ(book.HeldMicros(1, 1000), 0) << "expired at its bound";
  EXPECT_TRUE(book.Place(2, "same", 40, 1000, 2000)->granted) << "the id is free again";
  EXPECT_EQ(book.Expire(2000, 60'000), 1);
  EXPECT_EQ(book.live_holds(), 0);
}

TEST(HoldBook, ParallelHoldsOfOneUserNeverSpendTheSameMoneyTwice) {
  HoldBook book;
  book.Load({{7, true, 1000, 500, 1}});
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i)
        if (book.Place(7, std::to_string(t) + "-" + std::to_string(i), 7, 0, 1000)->granted)
          ++granted;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(granted.load(), 1500 / 7);
  // Releasing them all gives everything back; a release of an unknown hold is harmless.
  book.Release(12345);
  EXPECT_EQ(book.HeldMicros(7, 0), (1500 / 7) * 7);
}

}  // namespace
}  // namespace tollgate::billing
