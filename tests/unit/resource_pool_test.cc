#include "common/resource_pool.h"

#include <gtest/gtest.h>

#include <set>

namespace hq {
namespace {

class PoolTest : public ::testing::Test {
 protected:
  void make(std::initializer_list<const char*> defs, const char* cpus = "2x4") {
    ResourceDescriptor d;
    d.set(*parse_cpu_definition(cpus));
    for (const char* def : defs) d.set(*parse_resource_definition(def));
    pool = ResourcePool(d, names);
  }
  PoolRequest request(std::initializer_list<const char*> entries) {
    std::vector<ResourceRequestEntry> list;
    for (const char* e : entries) {
      auto parsed = parse_named_request(e);
      EXPECT_TRUE(parsed) << parsed.message();
      list.push_back(*parsed);
    }
    auto r = make_request(list);
    EXPECT_TRUE(r) << r.message();
    return intern_request(*r, names);
  }
  // Units of cpus taken, and the groups they are in.
  std::vector<uint32_t> cpus_of(const Allocation& a) {
    std::vector<uint32_t> out;
    for (const auto& e : a) {
      if (e.resource == names.find("cpus")) out.push_back(e.unit);
    }
    return out;
  }
  std::set<uint32_t> groups_of(const Allocation& a) {
    std::set<uint32_t> out;
    for (uint32_t u : cpus_of(a)) out.insert(pool.group_of(names.find("cpus"), u));
    return out;
  }
  uint32_t cpus_id() { return names.find("cpus"); }

  ResourceNames names;
  ResourcePool pool;
  Allocation a;
};

TEST_F(PoolTest, CompactTakesOneGroupWhenItCan) {
  make({});
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), a));
  EXPECT_EQ(cpus_of(a), (std::vector<uint32_t>{0, 1, 2}));
  // Group 0 has 1 left, group 1 has 4: a 2-CPU task goes whole into group 1.
  ASSERT_TRUE(pool.allocate(request({"cpus=2"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  // 3 free (1 + 2): compact spreads when it must.
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
  EXPECT_EQ(pool.free_amount(cpus_id()), 0u);
  EXPECT_FALSE(pool.fits(request({"cpus=1"})));
}

TEST_F(PoolTest, ForceCompactWaitsForOneGroup) {
  make({});
  Allocation first, second;
  ASSERT_TRUE(pool.allocate(request({"cpus=2"}), first));   // group 0: 2 left
  ASSERT_TRUE(pool.allocate(request({"cpus=3"}), second));  // group 1: 1 left
  // 3 CPUs are free, but in two groups: compact! waits, compact does not.
  EXPECT_FALSE(pool.fits(request({"cpus=3 compact!"})));
  EXPECT_FALSE(pool.fits(request({"cpus=3 tight!"})));
  EXPECT_TRUE(pool.fits(request({"cpus=3"})));
  EXPECT_NE(pool.why_not(request({"cpus=3 compact!"}), names).find("required shape"),
            std::string::npos);
  pool.release(second);
  ASSERT_TRUE(pool.allocate(request({"cpus=3 compact!"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  // 6 CPUs need 2 groups of 4 at least: compact! takes exactly 2.
  pool.release(a);
  pool.release(first);
  ASSERT_TRUE(pool.allocate(request({"cpus=6 compact!"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
}

TEST_F(PoolTest, TightFillsTheMostUsedGroup) {
  make({});
  Allocation first;
  ASSERT_TRUE(pool.allocate(request({"cpus=1"}), first));  // group 0: 3 left
  // compact picks the group with most free (group 1), tight the fullest that still fits.
  EXPECT_TRUE(pool.allocate(request({"cpus=2"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{1}));
  pool.release(a);
  EXPECT_TRUE(pool.allocate(request({"cpus=2 tight"}), a));
  EXPECT_EQ(groups_of(a), (std::set<uint32_t>{0}));
}

TEST_F(PoolTest, ScatterSpreadsOverGroups) {
  make({}, "4x2");
  ASSERT_TRUE(pool.allocate(request({"cpus=4 scatter"}), a));
  EXPECT_EQ(groups_of(a).size(), 4u);
  pool.release(a);
  ASSERT_TRUE(pool.allocate(request({"cpus=4"}), a));
  EXPECT_EQ(groups_of(a).size(), 2u);
}

TEST_F(PoolTest, AllNeedsTheWholeResource) {
  make({"mem=sum(1000)"});
  Allocation one;
  ASSERT_TRUE(pool.allocate(request({"cpus=1"}), one));
  EXPECT_FALSE(pool.fits(request({"cpus=all"})));
  EXPECT_TRUE(pool.could_fit(request({"cpus=all"})));
  pool.release(one);
  ASSERT_TRUE(pool.allocate(request({"cpus=all", "mem=all"}), a));
  EXPECT_EQ(cpus_of(a).size(), 8u);
  EXPECT_EQ(pool.free_amount(names.find("mem")), 0u);
}

TEST_F(PoolTest, FractionsShareAUnit) {
  make({"gpus=[0,1]"});
  Allocation x, y, z;
  ASSERT_TRUE(pool.allocate(request({"gpus=0.5"}), x));
  ASSERT_TRUE(pool.allocate(request({"gpus=0.5"}), y));
  auto gpu = [&](const Allocation& al) {
    for (const auto& e : al) {
      if (e.resource == names.find("gpus")) return e.unit;
    }
    return UINT32_MAX;
  };
  EXPECT_EQ(gpu(x), gpu(y));  // two halves share one GPU
  ASSERT_TRUE(pool.allocate(request({"gpus=1"}), z));
  EXPECT_NE(gpu(z), gpu(x));
  EXPECT_FALSE(pool.fits(request({"gpus=0.25"})));
  pool.release(x);
  EXPECT_TRUE(pool.fits(request({"gpus=0.5"})));
  EXPECT_FALSE(pool.fits(request({"gpus=1"})));  // half of a GPU is not a GPU
}

TEST_F(PoolTest, SumsAndMissingResources) {
  make({"mem=sum(100)"});
  ASSERT_TRUE(pool.allocate(request({"mem=60"}), a));
  EXPECT_FALSE(pool.fits(request({"mem=60"})));
  EXPECT_TRUE(pool.could_fit(request({"mem=60"})));
  EXPECT_EQ(pool.why_not(request({"mem=60"}), names), "needs 60 of mem, 40 free now");
  EXPECT_FALSE(pool.could_fit(request({"mem=101"})));
  EXPECT_EQ(pool.why_not(request({"mem=101"}), names), "needs 101 of mem, has 100");
  EXPECT_FALSE(pool.could_fit(request({"gpus=1"})));
  EXPECT_EQ(pool.why_not(request({"gpus=1"}), names), "no resource 'gpus' on this worker");
  EXPECT_EQ(pool.why_not(request({"cpus=9"}), names), "needs 9 of cpus, has 8");
  EXPECT_EQ(pool.why_not(request({"cpus=7"}), names), "");  // mem=60 took one CPU
}

// Random allocations and releases keep the free amounts equal to the total minus what is held.
TEST_F(PoolTest, RandomChurnKeepsAccounts) {
  make({"gpus=[[0,1],[2,3]]", "mem=sum(64)"}, "4x4");
  std::vector<PoolRequest> kinds = {request({"cpus=1"}),           request({"cpus=4 compact!"}),
                                    request({"cpus=3 scatter"}),   request({"cpus=2 tight"}),
                                    request({"gpus=0.5"}),         request({"gpus=2 compact!"}),
                                    request({"mem=16", "cpus=2"}), request({"cpus=5 tight!"})};
  std::vector<Allocation> held;
  uint64_t seed = 12345;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  for (int step = 0; step < 5000; ++step) {
    if (!held.empty() && next() % 3 == 0) {
      size_t k = (next() >> 33) % held.size();
      pool.release(held[k]);
      held.erase(held.begin() + static_cast<long>(k));
    } else {
      const PoolRequest& r = kinds[(next() >> 33) % kinds.size()];
      bool fits = pool.fits(r);
      Allocation al;
      ASSERT_EQ(pool.allocate(r, al), fits);
      if (fits) held.push_back(al);
    }
    ResourceAmount used_cpu = 0;
    std::set<uint32_t> whole;
    for (const auto& al : held) {
      for (const auto& e : al) {
        if (e.resource == cpus_id()) {
          used_cpu += e.amount;
          ASSERT_TRUE(whole.insert(e.unit).second) << "a CPU given twice";
        }
      }
    }
    ASSERT_EQ(pool.free_amount(cpus_id()) + used_cpu, pool.total_amount(cpus_id()));
  }
}

}  // namespace
}  // namespace hq
