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

// Holds expire in expiry order whatever order they were placed in, and one Place costs only the
// holds that expired (the expiry index), not a scan of all the user's holds.
TEST(HoldBook, HoldsExpireInExpiryOrderThroughTheIndex) {
  HoldBook book;
  book.Load({{1, true, 1'000'000, 0, 1}});
  for (int i = 0; i < 1000; ++i)
    ASSERT_TRUE(book.Place(1, "r" + std::to_string(i), 10, 0, 1000 + (i * 7919) % 1000)->granted);
  EXPECT_EQ(book.HeldMicros(1, 0), 10'000);
  EXPECT_EQ(book.HeldMicros(1, 1499), 10 * 500) << "those expiring at 1000..1499 are gone";
  EXPECT_EQ(book.Available(1, 1499), 1'000'000 - 5000);
  EXPECT_EQ(book.Expire(2000, 60'000), 500);
  EXPECT_EQ(book.live_holds(), 0);
}

// A budget is one hold for the sum: records naming it move their cost from it to the charges (so
// balance - held does not move), a return keeps what records still owe, and it is sized from the
// headroom (none close to the end of the money).
TEST(HoldBook, BudgetsAreSizedFromTheHeadroomAndShrinkByTheirRecords) {
  HoldBook book;
  const BudgetSizing sizing{100, 8};
  EXPECT_FALSE(book.PlaceBudget(1, 0, 500, 10, sizing, 0, 1000).has_value()) << "not loaded";
  book.Load({{1, true, 8000, 0, 1}});
  auto b = book.PlaceBudget(1, 0, 5000, 10, sizing, 0, 1000);
  ASSERT_TRUE(b && b->found);
  EXPECT_EQ(b->added_micros, 1000) << "an eighth of the headroom at most";
  EXPECT_EQ(book.Available(1, 0), 7000);
  // At its share already: a refill adds nothing, but extends the expiry.
  auto more = book.PlaceBudget(1, b->budget_id, 500, 10, sizing, 0, 3000);
  EXPECT_EQ(more->added_micros, 0);
  EXPECT_EQ(more->amount_micros, 1000);
  EXPECT_EQ(book.HeldMicros(1, 2000), 1000) << "extended to 3000";
  // Two records spent from it (a batch at version 2): charged, and the budget shrinks by them.
  book.Settle({{1, 0, 300, 2, b->budget_id}, {1, 0, 200, 2, b->budget_id}});
  EXPECT_EQ(book.HeldMicros(1, 0), 500);
  EXPECT_EQ(book.Available(1, 0), 8000 - 500 - 500);
  // Refilled up to an eighth of what it was granted from (7000 free + its 500).
  more = book.PlaceBudget(1, b->budget_id, 500, 10, sizing, 0, 3000);
  EXPECT_EQ(more->added_micros, 7500 / 8 - 500);
  EXPECT_EQ(more->amount_micros, 7500 / 8);
  // A redelivery (cost 0) changes nothing.
  book.Settle({{1, 0, 0, 0, b->budget_id}});
  EXPECT_EQ(book.HeldMicros(1, 0), 7500 / 8);
  // Returned having spent 700: the 200 whose record is still on its way stay held.
  book.ReturnBudget(b->budget_id, 700);
  EXPECT_EQ(book.HeldMicros(1, 0), 200);
  EXPECT_FALSE(book.PlaceBudget(1, b->budget_id, 10, 1, sizing, 0, 3000)->found)
      << "a returned budget grows no more";
  book.Settle({{1, 0, 200, 3, b->budget_id}});
  EXPECT_EQ(book.HeldMicros(1, 0), 0);
  EXPECT_EQ(book.live_holds(), 0) << "a returned budget ends with its last record";
  EXPECT_EQ(book.Available(1, 0), 8000 - 700);
  // Close to the end of the money: no budget (per-request holds decide).
  book.Load({{1, true, 90, 0, 4}});
  auto none = book.PlaceBudget(1, 0, 50, 1, sizing, 0, 1000);
  EXPECT_EQ(none->budget_id, 0);
  EXPECT_EQ(none->added_micros, 0);
  // Nor when an eighth of the headroom is less than one request's worst case.
  book.Load({{1, true, 1000, 0, 5}});
  EXPECT_EQ(book.PlaceBudget(1, 0, 500, 126, sizing, 0, 1000)->added_micros, 0);
  EXPECT_EQ(book.PlaceBudget(1, 0, 500, 125, sizing, 0, 1000)->added_micros, 125);
}

// An edge that dies keeps its budget held until it expires: nobody else spends that money; then
// it is free again, and a late record is still charged.
TEST(HoldBook, ABudgetNobodyReturnsExpires) {
  HoldBook book;
  book.Load({{1, true, 8000, 0, 1}});
  auto b = book.PlaceBudget(1, 0, 1000, 1, {0, 8}, 0, 1000);
  ASSERT_EQ(b->added_micros, 1000);
  EXPECT_FALSE(book.Place(1, "r", 7001, 10, 2000)->granted);
  EXPECT_EQ(book.Expire(1000, 60'000), 1);
  EXPECT_TRUE(book.Place(1, "r", 7001, 1000, 2000)->granted);
  book.Settle({{1, 0, 100, 2, b->budget_id}});  // late: charged all the same
  EXPECT_EQ(book.Available(1, 1000), 8000 - 100 - 7001);
}

}  // namespace
}  // namespace tollgate::billing
